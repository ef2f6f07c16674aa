//! Listeners and the per-connection tasks.
//!
//! Each listener accepts with a large backlog; every connection gets a task
//! (no thread per connection) inside a span with its id, protocol, peer and,
//! once known, user. A semaphore bounds the connections: past
//! `max_connections` a client gets the protocol's "too busy" reply and is
//! closed. Shutdown stops the accept loops, lets sessions drain for
//! `shutdown_grace`, then ends the rest.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use mailgate_config::{Config, Protocol, TlsMode};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::context::Context;
use crate::net::stream::Stream;
use crate::net::tls::ListenerTls;
use crate::protocols::imap::Imap;
use crate::protocols::pop3::Pop3;
use crate::protocols::smtp::Smtp;
use crate::session::Dialect;
use crate::session::End;

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    addresses: Vec<(Protocol, SocketAddr)>,
    /// Where `/metrics` and `/healthz` are served, when configured.
    metrics: Option<SocketAddr>,
    /// The web portal, when configured.
    portal: Option<crate::portal::Portal>,
    /// TLS state of the listeners that have TLS.
    tls: Vec<Arc<ListenerTls>>,
    ctx: Arc<Context>,
    stop_accepting: CancellationToken,
    kill: CancellationToken,
    tracker: TaskTracker,
    grace: Duration,
}

static CONNECTION_IDS: AtomicU64 = AtomicU64::new(1);

/// Binds every listener and starts serving.
pub async fn start(config: Arc<Config>) -> anyhow::Result<Gateway> {
    start_with(config, true).await
}

/// As [`start`], without the background work that speaks for the
/// installation (keep-alive, the snapshots `mailgate accounts` reads, the
/// account metrics, certificate warnings): for `mailgate doctor`, whose
/// gateway must not overwrite what the serving one says.
pub async fn start_for_checks(config: Arc<Config>) -> anyhow::Result<Gateway> {
    start_with(config, false).await
}

async fn start_with(config: Arc<Config>, background: bool) -> anyhow::Result<Gateway> {
    // The state directory is the gateway's own, or it does not start (the
    // commands check it the same way before they open the store).
    let state_dir = config.gateway.state_dir.clone();
    let checked =
        tokio::task::spawn_blocking(move || crate::accounts::store::secure_dirs(&state_dir))
            .await
            .context("the state directory")?;
    for w in checked.context("the state directory")? {
        tracing::warn!("{w}");
    }
    let (store, fleet) = crate::accounts::store::open(&config)
        .await
        .context("the token store")?;
    info!(store = ?store, shared = fleet.shared(), "token store");
    let ctx = Arc::new(Context::new(
        config.clone(),
        (store, fleet),
        crate::protocols::proof::prove,
    )?);
    let stop_accepting = CancellationToken::new();
    let kill = CancellationToken::new();
    let tracker = TaskTracker::new();
    let max_connections = config.gateway.max_connections_for(descriptor_limit());
    info!(max_connections, "sessions at once");
    let permits = Arc::new(Semaphore::new(max_connections));
    let per_ip = crate::net::per_address::PerAddress::default();
    let mut addresses = Vec::new();
    let mut all_tls = Vec::new();
    let mut described = Vec::new();
    for l in &config.listeners {
        let tls = match l.tls {
            TlsMode::None => None,
            _ => {
                let t =
                    crate::net::tls::open(l.certificate.clone(), l.key.clone(), &config.gateway)
                        .await
                        .with_context(|| {
                            format!(
                                "TLS certificate for the {} listener on {}",
                                l.protocol, l.address
                            )
                        })?;
                info!(
                    protocol = %l.protocol,
                    address = %l.address,
                    certificate = %t.source.cert.display(),
                    sha256 = %t.fingerprint(),
                    "TLS certificate"
                );
                all_tls.push(t.clone());
                Some(t)
            }
        };
        let listener = crate::net::socket::bind(l.address).with_context(|| {
            format!(
                "cannot listen on {} ({}); is another program using it?",
                l.address, l.protocol
            )
        })?;
        let local = listener.local_addr()?;
        info!(protocol = %l.protocol, address = %local, "listening");
        addresses.push((l.protocol, local));
        described.push(crate::portal::ListenerInfo {
            protocol: l.protocol,
            bound: local,
            mode: l.tls,
            self_signed: tls
                .as_ref()
                .filter(|t| t.source.generated)
                .map(|t| t.fingerprint()),
        });
        let listening = Listening {
            protocol: l.protocol,
            in_band: l.in_band_authorization,
            mode: l.tls,
            tls,
            // Without STARTTLS there is nothing to wait for (a listener off
            // loopback needs insecure_plaintext, or a balancer that ends
            // TLS); with it, only this machine's programs skip it.
            auth_before_tls: l.tls == TlsMode::None || l.local_only() || l.insecure_plaintext,
            proxy_protocol: l.proxy_protocol,
        };
        let shared = (ctx.clone(), (permits.clone(), per_ip.clone()));
        let (stop, kill, tracker) = (stop_accepting.clone(), kill.clone(), tracker.clone());
        // The one place that turns a protocol into its dialect.
        match l.protocol {
            Protocol::Imap => tokio::spawn(accept_loop::<Imap>(
                listener, listening, shared, stop, kill, tracker,
            )),
            Protocol::Smtp => tokio::spawn(accept_loop::<Smtp>(
                listener, listening, shared, stop, kill, tracker,
            )),
            Protocol::Pop3 => tokio::spawn(accept_loop::<Pop3>(
                listener, listening, shared, stop, kill, tracker,
            )),
        };
    }
    // A change of an account is told by the process that made it, even
    // `mailgate doctor`'s.
    if let Some(n) = crate::notify::Notifier::from_config(&config)? {
        info!("account events go to [notify]");
        tokio::spawn(crate::notify::run(
            ctx.accounts.subscribe(),
            n.with_context(ctx.clone()),
        ));
    }
    if background {
        crate::tasks::spawn_all(&ctx, &stop_accepting);
    }
    let metrics = match config.gateway.metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} for metrics; is another program using it?")
            })?;
            let local = listener.local_addr()?;
            info!(address = %local, "metrics on /metrics and /healthz");
            tokio::spawn(crate::observe::metrics::serve(
                listener,
                ctx.metrics.clone(),
                kill.clone(),
            ));
            Some(local)
        }
        None => None,
    };
    let portal = match &config.portal {
        Some(p) => {
            let tls = if p.tls {
                let t =
                    crate::net::tls::open(p.certificate.clone(), p.key.clone(), &config.gateway)
                        .await
                        .context("TLS certificate for the portal")?;
                info!(
                    certificate = %t.source.cert.display(),
                    sha256 = %t.fingerprint(),
                    "portal TLS certificate"
                );
                all_tls.push(t.clone());
                Some(t)
            } else {
                None
            };
            Some(
                crate::portal::start(
                    ctx.clone(),
                    p.clone(),
                    described,
                    tls,
                    stop_accepting.clone(),
                )
                .await?,
            )
        }
        None => None,
    };
    Ok(Gateway {
        addresses,
        portal,
        metrics,
        tls: all_tls,
        ctx,
        stop_accepting,
        kill,
        tracker,
        grace: config.gateway.shutdown_grace,
    })
}

impl Gateway {
    /// The bound address of the web portal.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// The bound address of the web portal.
    pub fn portal_address(&self) -> Option<SocketAddr> {
        self.portal.as_ref().map(|p| p.address)
    }

    /// The bound address of the metrics endpoint.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// The first bound address of a protocol.
    pub fn address(&self, protocol: Protocol) -> Option<SocketAddr> {
        self.addresses
            .iter()
            .find(|(p, _)| *p == protocol)
            .map(|(_, a)| *a)
    }

    /// SIGHUP: reads the configuration file again and, when it is valid,
    /// uses its providers, accounts and gateway settings for new sessions
    /// and logins; then reloads the certificates. Relayed sessions are not
    /// touched. Listener changes need a restart. On errors the running
    /// configuration stays and the errors are returned. The files are
    /// read off the async workers.
    pub async fn reload(&self) -> Result<(), mailgate_config::ConfigErrors> {
        let old = self.ctx.config();
        let file = old.file.clone();
        let new = tokio::task::spawn_blocking(move || mailgate_config::load(&file))
            .await
            .map_err(|e| {
                mailgate_config::ConfigErrors(vec![mailgate_config::ConfigError {
                    file: old.file.clone(),
                    key: String::new(),
                    message: format!("reading the configuration failed: {e}"),
                }])
            })??;
        let listeners = |c: &Config| {
            c.listeners
                .iter()
                .map(|l| {
                    format!(
                        "{} {} {:?} {:?} {:?}",
                        l.protocol, l.address, l.tls, l.certificate, l.key
                    )
                })
                .collect::<Vec<_>>()
        };
        if listeners(&old) != listeners(&new) {
            warn!("the listeners changed; restart mailgate to apply that part");
        }
        self.ctx.set_config(Arc::new(new));
        info!("configuration reloaded: providers and accounts apply to new logins");
        self.reload_certificates().await;
        Ok(())
    }

    /// Reads every listener's certificate and key again (SIGHUP). New
    /// handshakes use the new ones; open sessions are not touched. A file
    /// that fails to load leaves that listener's old certificate in place.
    /// The files are read off the async workers.
    pub async fn reload_certificates(&self) -> Vec<Result<String, mailgate_certs::CertError>> {
        let all = self.tls.clone();
        let done = tokio::task::spawn_blocking(move || {
            all.iter()
                .map(|t| (t.clone(), t.reload()))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        done.into_iter()
            .map(|(t, r)| {
                match &r {
                    Ok(fp) => info!(certificate = %t.source.cert.display(), sha256 = %fp, "TLS certificate reloaded"),
                    Err(e) => warn!(error = %e, "TLS certificate reload failed; keeping the old one"),
                }
                r
            })
            .collect()
    }

    /// Stops accepting, waits up to `shutdown_grace` for sessions to end,
    /// then ends those still open.
    pub async fn shutdown(self) {
        self.stop_accepting.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.grace, self.tracker.wait())
            .await
            .is_err()
        {
            info!(
                open = self.tracker.len(),
                "grace period over; closing the remaining sessions"
            );
            self.kill.cancel();
            self.tracker.wait().await;
        }
        info!("stopped");
    }
}

/// What a session needs to know of its listener.
#[derive(Debug, Clone)]
pub struct Listening {
    pub protocol: Protocol,
    /// In-band authorisation is on for this listener.
    pub in_band: bool,
    pub mode: TlsMode,
    pub tls: Option<Arc<ListenerTls>>,
    /// Logins are accepted before STARTTLS.
    pub auth_before_tls: bool,
    /// A PROXY header comes first.
    pub proxy_protocol: bool,
}

/// The listener's shared state: the context and the connection limits.
type Shared = (
    Arc<Context>,
    (Arc<Semaphore>, crate::net::per_address::PerAddress),
);

async fn accept_loop<D: Dialect>(
    listener: TcpListener,
    listening: Listening,
    (ctx, (permits, per_ip)): Shared,
    stop: CancellationToken,
    kill: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        crate::net::socket::tune(&stream);
        let id = CONNECTION_IDS.fetch_add(1, Ordering::Relaxed);
        let protocol = listening.protocol;
        if listening.proxy_protocol && !ctx.config().gateway.trusts_proxy(peer.ip()) {
            info!(id, proto = %protocol, %peer, "closed: a PROXY listener takes connections only from trusted_proxies");
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let span = info_span!("conn", id, proto = %protocol, %peer);
            tracker.spawn(too_busy::<D>(stream, "connection limit reached").instrument(span));
            continue;
        };
        let (ctx, kill, listening, per_ip) =
            (ctx.clone(), kill.clone(), listening.clone(), per_ip.clone());
        tracker.spawn(async move {
            let mut stream = stream;
            // Behind a load balancer the client is the one its header names.
            let client = if listening.proxy_protocol {
                let limit = Duration::from_secs(10).min(ctx.config().gateway.preauth_timeout);
                match crate::net::proxy_header::read_header(&mut stream, peer, limit).await {
                    Ok(c) => c,
                    Err(e) => {
                        info!(id, proto = %protocol, proxy = %peer, error = %e, "closed: no valid PROXY header");
                        return;
                    }
                }
            } else {
                peer
            };
            let span = if listening.proxy_protocol {
                info_span!("conn", id, proto = %protocol, peer = %client, proxy = %peer, user = tracing::field::Empty)
            } else {
                info_span!("conn", id, proto = %protocol, peer = %client, user = tracing::field::Empty)
            };
            let max_per_ip = ctx.config().gateway.connections_per_ip(client.ip());
            let Some(slot) = per_ip.hold(client.ip(), max_per_ip) else {
                // Refused: it holds no place under max_connections.
                drop(permit);
                too_busy::<D>(stream, "too many connections from this address")
                    .instrument(span)
                    .await;
                return;
            };
            async move {
                let _permit = (permit, slot);
                tokio::select! {
                    _ = kill.cancelled() => info!("closed by shutdown"),
                    _ = session::<D>(stream, client, listening, ctx) => {}
                }
            }
            .instrument(span)
            .await;
        });
    }
}

async fn session<D: Dialect>(stream: TcpStream, peer: SocketAddr, l: Listening, ctx: Arc<Context>) {
    tracing::debug!("connected");
    let plain = Stream::plain(stream);
    let (client, starttls, tls) = match (l.mode, &l.tls) {
        (TlsMode::Implicit, Some(t)) => {
            let limit = ctx.config().gateway.preauth_timeout;
            match tokio::time::timeout(limit, plain.accept_tls(&t.acceptor())).await {
                Ok(Ok(c)) => (c, None, true),
                Ok(Err(e)) => {
                    info!(error = %e, "TLS handshake failed");
                    ctx.metrics
                        .session_ended(l.protocol, End::TlsFailed.label());
                    return;
                }
                Err(_) => {
                    info!("TLS handshake timed out");
                    ctx.metrics
                        .session_ended(l.protocol, End::TlsFailed.label());
                    return;
                }
            }
        }
        (TlsMode::Starttls, Some(t)) => (plain, Some(t.acceptor()), false),
        _ => (plain, None, false),
    };
    let setup = crate::session::Setup {
        client: crate::session::login::Client {
            peer,
            in_band: l.in_band,
        },
        starttls,
        auth_before_tls: l.auth_before_tls,
        tls,
        tally: crate::session::Tally {
            metrics: ctx.metrics.clone(),
            protocol: l.protocol,
            state: ctx.metrics.connected(l.protocol),
        },
    };
    crate::session::serve::<D>(client, setup, ctx).await;
}

async fn too_busy<D: Dialect>(mut stream: TcpStream, why: &str) {
    warn!("{why}; refusing a client");
    let reply = D::TOO_BUSY;
    // A client that does not read does not hold the connection.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(reply).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// The process's soft descriptor limit (`mailgate run` has raised it to
/// the hard one); a generous guess when it cannot be read.
pub fn descriptor_limit() -> u64 {
    rlimit::Resource::NOFILE
        .get()
        .map(|(soft, _)| soft)
        .unwrap_or(65_536)
}
