//! The one session of every protocol: the driver feeds client bytes to the
//! dialect's pre-auth state machine under the pre-auth deadline, writes
//! what it says, runs STARTTLS, and hands its login requests to the login
//! policy until one succeeds; then the step the dialect chooses after a
//! login runs (today every dialect relays bytes). Every session ends with
//! an [`End`], logged and counted. The protocol logic itself lives in each
//! dialect's `preauth` module.

pub mod end;
pub mod established;
pub mod graph;
pub mod login;
pub mod relay;
pub mod residual;
pub mod spool;
pub mod upstream;

pub use end::End;
pub use established::Established;

use std::future::Future;
use std::time::Duration;

use secrecy::SecretString;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument as _, debug, info};

use crate::context::Context;
use crate::net::stream::Stream;
use crate::session::login::Failure;
use crate::session::upstream::LoggedIn;

/// A connection's place in the metrics.
#[derive(Debug)]
pub struct Tally {
    pub metrics: std::sync::Arc<crate::observe::metrics::Metrics>,
    pub protocol: mailgate_config::Protocol,
    /// In the `preauth` state until the relay starts.
    pub state: crate::observe::metrics::InState,
}

impl Tally {
    /// Leaves `preauth` for `relaying` (after a login, for the rest of the
    /// session), and the metrics and protocol that go with it.
    pub fn relaying(
        self,
    ) -> (
        crate::observe::metrics::InState,
        std::sync::Arc<crate::observe::metrics::Metrics>,
        mailgate_config::Protocol,
    ) {
        let Tally {
            metrics,
            protocol,
            state,
        } = self;
        drop(state);
        (metrics.enter(protocol, "relaying"), metrics, protocol)
    }
}

/// A connection's setting, from its listener.
pub struct Setup {
    pub client: crate::session::login::Client,
    /// The acceptor for STARTTLS, when the listener offers it.
    pub starttls: Option<TlsAcceptor>,
    /// Logins are accepted before TLS on a STARTTLS listener (loopback, or
    /// `insecure_plaintext = true`).
    pub auth_before_tls: bool,
    /// TLS is up from the start (implicit TLS).
    pub tls: bool,
    pub tally: Tally,
}

impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup")
            .field("client", &self.client)
            .field("starttls", &self.starttls.is_some())
            .field("auth_before_tls", &self.auth_before_tls)
            .field("tls", &self.tls)
            .finish()
    }
}

/// The settings of every protocol's pre-auth machine, from the gateway's
/// limits and the connection's listener.
#[derive(Debug, Clone)]
pub struct Options {
    /// Name used in greetings.
    pub hostname: String,
    /// Longest client line, CRLF included.
    pub max_line: usize,
    /// Largest IMAP literal (a LOGIN argument).
    pub max_literal: usize,
    /// Longest IMAP tag.
    pub max_tag: usize,
    /// Failed logins before the connection is closed.
    pub max_failures: u32,
    /// STARTTLS (STLS) is offered: a `starttls` listener before the upgrade.
    pub starttls: bool,
    /// Logins are accepted before TLS (false on a non-loopback `starttls`
    /// listener until the upgrade).
    pub auth_before_tls: bool,
    /// TLS is already active (implicit TLS).
    pub tls: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            hostname: "localhost".into(),
            max_line: 8 * 1024,
            max_literal: 8 * 1024,
            max_tag: 64,
            max_failures: 3,
            starttls: false,
            auth_before_tls: true,
            tls: false,
        }
    }
}

impl Options {
    pub fn new(gw: &mailgate_config::Gateway, setup: &Setup) -> Options {
        Options {
            hostname: gw.hostname.clone(),
            max_line: gw.max_line,
            max_literal: gw.max_literal,
            max_tag: gw.max_tag,
            max_failures: gw.max_failures,
            starttls: setup.starttls.is_some(),
            auth_before_tls: setup.auth_before_tls,
            tls: setup.tls,
        }
    }
}

impl Options {
    /// Logins are accepted now: under TLS, or before it where the listener
    /// allows.
    pub fn login_allowed(&self) -> bool {
        self.tls || self.auth_before_tls
    }

    /// TLS is up after STARTTLS/STLS: it is not offered again.
    pub fn tls_started(&mut self) {
        self.starttls = false;
        self.tls = true;
    }
}

/// What a pre-auth state machine asks of its session.
#[derive(Debug)]
pub enum Event {
    /// Send these bytes to the client.
    Write(Vec<u8>),
    /// Authenticate; answer with [`PreAuth::login_failed`] or, on success,
    /// leave the machine (its residual bytes go to the relay).
    Login {
        user: String,
        password: SecretString,
    },
    /// Close the connection (after writing what came before), for this
    /// reason.
    Close(End),
    /// Run the TLS handshake now (STARTTLS/STLS was accepted; the machine
    /// has discarded whatever the client pipelined in clear), then call
    /// [`PreAuth::tls_started`].
    StartTls,
}

/// A protocol's pre-authentication state machine, sans I/O.
pub trait PreAuth {
    /// The greeting sent on connect.
    fn greeting(&self) -> Vec<u8>;
    fn feed(&mut self, data: &[u8]);
    /// The next thing to do; `None` when more input is needed (or while a
    /// login is pending).
    fn next_event(&mut self) -> Option<Event>;
    /// The pending login failed: queue the protocol's reply (and a close
    /// after too many credential failures).
    fn login_failed(&mut self, failure: &Failure);
    /// The reply sent when the pre-auth deadline passes.
    fn timeout_reply(&self, limit: Duration) -> Vec<u8>;
    /// The bytes the client sent after its login command.
    fn into_residual(self) -> Vec<u8>;
    /// TLS is now up after STARTTLS: forget the session state of the clear
    /// phase and stop offering STARTTLS.
    fn tls_started(&mut self);
}

/// Runs the pre-auth dialogue on `client` until `login` succeeds (the
/// stream, possibly upgraded to TLS, and the login's value are returned)
/// or the dialogue ends otherwise (why is returned, and logged here).
/// `starttls` is the acceptor for STARTTLS when the listener offers it.
pub async fn drive<M, T, F, Fut>(
    mut client: Stream,
    m: &mut M,
    limit: Duration,
    starttls: Option<TlsAcceptor>,
    mut login: F,
) -> Result<(Stream, T), End>
where
    M: PreAuth,
    F: FnMut(&M, String, SecretString) -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let deadline = Instant::now() + limit;
    // Writes run under the same deadline as reads: a client that sends
    // commands and never reads its replies is closed when it runs out.
    let write = async |client: &mut Stream, bytes: &[u8]| match tokio::time::timeout_at(
        deadline,
        client.send(bytes),
    )
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            debug!(error = %e, "client write failed");
            Err(End::ClientClosed)
        }
        Err(_) => {
            info!("closing: the client does not read its replies within the pre-auth timeout");
            Err(End::Timeout)
        }
    };
    write(&mut client, &m.greeting()).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        while let Some(event) = m.next_event() {
            match event {
                Event::Write(bytes) => write(&mut client, &bytes).await?,
                Event::Close(why) => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), client.shutdown()).await;
                    return Err(why);
                }
                Event::StartTls => {
                    let Some(acceptor) = starttls.as_ref() else {
                        return Err(End::Refused);
                    };
                    match tokio::time::timeout_at(deadline, client.accept_tls(acceptor)).await {
                        Ok(Ok(upgraded)) => client = upgraded,
                        Ok(Err(e)) => {
                            info!(error = %e, "STARTTLS handshake failed");
                            return Err(End::TlsFailed);
                        }
                        Err(_) => {
                            info!("STARTTLS handshake timed out");
                            return Err(End::TlsFailed);
                        }
                    }
                    debug!("STARTTLS done");
                    m.tls_started();
                }
                Event::Login { user, password } => {
                    // Only a name that can be an account reaches the log
                    // (no control characters, bounded length).
                    let shown = crate::accounts::account_name(&user);
                    if user.trim().is_empty() {
                        // The same rule for every protocol: no account has
                        // an empty name.
                        info!("login with an empty user name");
                        m.login_failed(&Failure::BadCredentials);
                        continue;
                    }
                    // Each attempt in its own span; the connection's span
                    // gets the user once one logs in (a field recorded
                    // twice would be printed twice in text logs).
                    let shown = shown.as_deref().unwrap_or("(not a valid name)");
                    let attempt = login(m, user, password)
                        .instrument(tracing::info_span!("login", user = shown));
                    match attempt.await {
                        Ok(t) => {
                            tracing::Span::current().record("user", shown);
                            return Ok((client, t));
                        }
                        Err(f) => {
                            info!(failure = f.kind(), user = shown, "login failed");
                            m.login_failed(&f);
                        }
                    }
                }
            }
        }
        match tokio::time::timeout_at(deadline, client.read_some(&mut buf)).await {
            Err(_) => {
                info!("closing: no login within the pre-auth timeout");
                // A short grace for the farewell; a client that reads
                // nothing does not hold the connection open.
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    client.send(&m.timeout_reply(limit)),
                )
                .await;
                return Err(End::Timeout);
            }
            Ok(Ok(0)) => {
                debug!("client closed before login");
                return Err(End::ClientClosed);
            }
            Ok(Ok(n)) => m.feed(&buf[..n]),
            Ok(Err(e)) => {
                debug!(error = %e, "client read failed");
                return Err(End::ClientClosed);
            }
        }
    }
}

/// What the step after a login is given: the client (possibly upgraded to
/// TLS), its pre-auth machine (its state and the bytes it read beyond the
/// login), what the login established, the connection's place in the
/// metrics, and the context.
#[derive(Debug)]
pub struct LoggedInSession<M> {
    pub client: Stream,
    pub machine: M,
    pub established: Established,
    pub tally: Tally,
    pub ctx: std::sync::Arc<Context>,
}

/// The step after a login that every dialect takes today: tell the client
/// (the dialect's success reply, then its replies to refused pipelined
/// lines), and relay bytes both ways, flushing first what each side sent
/// beyond the login.
pub async fn relay_after_login<D: Dialect>(s: LoggedInSession<D::Client>) {
    let LoggedInSession {
        mut client,
        machine,
        established,
        tally,
        ..
    } = s;
    let Established::Upstream(upstream) = established else {
        tracing::warn!("only SMTP sends through Microsoft Graph; closing");
        return;
    };
    let mut reply = D::success(&machine, &upstream);
    let screened = residual::screen(&machine.into_residual(), D::screen, D::refuse);
    reply.extend_from_slice(&screened.replies);
    if let Err(e) = client.send(&reply).await {
        debug!(error = %e, "the client left before its login reply");
        return;
    }
    info!("logged in upstream; relaying");
    let (_relaying, metrics, protocol) = tally.relaying();
    crate::session::relay::run(
        client,
        upstream.stream,
        &screened.forward,
        &upstream.leftover,
        metrics.meters(protocol),
    )
    .await;
}

/// A protocol the gateway serves: its client machine, its upstream login
/// machine, its replies, and the step after a login. [`serve`] is the one
/// session of them all.
pub trait Dialect: Send + Sync + Sized + 'static {
    const PROTOCOL: mailgate_config::Protocol;
    /// Sent to a client refused for lack of room, before closing.
    const TOO_BUSY: &'static [u8];
    /// The pre-auth machine facing the client.
    type Client: PreAuth + Send;
    /// What the upstream login takes from the client's dialogue (SMTP: the
    /// client's EHLO name).
    type Hint: Clone + Send + Sync + 'static;
    /// The login machine facing the upstream server.
    type Upstream: mailgate_proto::upstream::Machine + Send;

    fn client(opts: Options) -> Self::Client;
    fn hint(client: &Self::Client) -> Self::Hint;
    fn upstream(hint: &Self::Hint, attempt: &crate::session::login::Attempt) -> Self::Upstream;
    /// The client's success reply, from its state (IMAP: the tag) and the
    /// upstream's result (IMAP: the capabilities).
    fn success(client: &Self::Client, up: &LoggedIn) -> Vec<u8>;
    /// How a line the client pipelined behind its login is screened
    /// ([`residual`]): is it a login command (never relayed)?
    fn screen(line: &[u8]) -> residual::Line;
    /// The local reply to a refused line of the residual.
    fn refuse(line: &[u8]) -> Vec<u8>;
    /// What the session does once the client is logged in; the driver
    /// and the login policy do not change with it. Every dialect relays
    /// bytes today ([`relay_after_login`]).
    fn after_login(session: LoggedInSession<Self::Client>) -> impl Future<Output = ()> + Send {
        relay_after_login::<Self>(session)
    }
}

/// One upstream login of dialect `D`.
pub async fn upstream_login<D: Dialect>(
    hint: &D::Hint,
    a: &crate::session::login::Attempt,
) -> Result<LoggedIn, crate::session::upstream::UpstreamError> {
    crate::session::upstream::log_in(D::upstream(hint, a), &a.server, a.tls.clone()).await
}

/// One client connection of dialect `D`: the pre-auth dialogue, the login
/// (local password, token, upstream login with a retry after a rejected
/// token), then the dialect's step after the login. How the dialogue
/// ended is counted in the metrics.
pub async fn serve<D: Dialect>(client: Stream, setup: Setup, ctx: std::sync::Arc<Context>) {
    let config = ctx.config();
    let mut m = D::client(Options::new(&config.gateway, &setup));
    let Setup {
        client: who,
        starttls,
        tally,
        ..
    } = setup;
    let limit = config.gateway.preauth_timeout;
    let ended = drive(client, &mut m, limit, starttls, |m, user, password| {
        let ctx = ctx.clone();
        let hint = D::hint(m);
        async move {
            let attempt = move |a: crate::session::login::Attempt| {
                let hint = hint.clone();
                async move { upstream_login::<D>(&hint, &a).await }
            };
            crate::session::login::run(&ctx, D::PROTOCOL, &user, &password, who, attempt).await
        }
    })
    .await;
    let end = ended.as_ref().map_or_else(|why| *why, |_| End::LoggedIn);
    tally.metrics.session_ended(D::PROTOCOL, end.label());
    if end != End::LoggedIn {
        info!(end = %end, "closed before a login");
    }
    let Ok((client, established)) = ended else {
        return;
    };
    D::after_login(LoggedInSession {
        client,
        machine: m,
        established,
        tally,
        ctx,
    })
    .await;
}

/// Keeps a reply text on one line.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Helpers for the state machines' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Event, PreAuth};
    use base64::Engine as _;
    use secrecy::ExposeSecret;

    pub fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    /// Feeds `input` and collects what is written until the machine waits
    /// or asks for something else (returned).
    pub fn run<M: PreAuth>(m: &mut M, input: &[u8]) -> (String, Option<Event>) {
        m.feed(input);
        let mut written = Vec::new();
        while let Some(e) = m.next_event() {
            match e {
                Event::Write(b) => written.extend(b),
                other => return (String::from_utf8_lossy(&written).into_owned(), Some(other)),
            }
        }
        (String::from_utf8_lossy(&written).into_owned(), None)
    }

    /// A browser's cross-protocol request (a web page POSTing to the
    /// port) gets no answer and closes the connection; nothing is logged
    /// in. `greeting`: what the machine sent on connect.
    pub fn http_is_closed_silently<M: PreAuth>(mut m: M) {
        let request = b"POST / HTTP/1.1\r\nHost: 127.0.0.1:1143\r\nContent-Type: text/plain\r\nContent-Length: 16\r\n\r\na LOGIN erin pw\r\n";
        let (written, event) = run(&mut m, request);
        assert_eq!(written, "", "no answer to an HTTP request");
        assert!(
            matches!(event, Some(super::Event::Close(super::End::Refused))),
            "{event:?}"
        );
        assert!(m.next_event().is_none(), "nothing after the close");
    }

    /// The credentials of a login event.
    pub fn creds(e: Option<Event>) -> (String, String) {
        match e {
            Some(Event::Login { user, password }) => (user, password.expose_secret().to_owned()),
            other => panic!("expected a login, got {other:?}"),
        }
    }
}
