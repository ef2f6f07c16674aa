//! The loopback HTTP listener that receives the authorization redirect
//! (RFC 8252 §7.3), on the provider's `redirect_uri` host and port.
//!
//! It serves one path; each request must carry the `state` of a pending
//! sign-in, and then delivers its `code` (or the provider's `error` and
//! `error_description`) to that sign-in and shows a short page in the
//! browser. With `http://127.0.0.1/` (no port) any free port is used and the
//! redirect URI names it. A request with an unknown `state` (a stale tab, or
//! a page forging redirects to abort sign-ins) is answered with a page and
//! otherwise ignored: the sign-ins under way go on waiting. For `localhost`
//! it listens on 127.0.0.1 and on [::1] (where the machine has IPv6), so no
//! other program can take the redirect on either.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Html;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::accounts::redis::RedisStore;
use crate::accounts::shared::{self, Sealer};

/// What the redirect brought.
#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("the provider refused the sign-in: {error}{}", if .description.is_empty() { String::new() } else { format!(" ({})", .description) })]
    Provider { error: String, description: String },
    #[error(
        "the redirect's state does not match this sign-in (a stale browser tab, or a forged request); run the login again"
    )]
    StateMismatch,
    #[error("the redirect carries no authorization code")]
    NoCode,
    #[error("the sign-in was abandoned")]
    Abandoned,
}

type Waiter = oneshot::Sender<Result<SecretString, RedirectError>>;

#[derive(Default)]
struct Shared {
    /// state → the sign-in waiting for it
    pending: Mutex<HashMap<String, Waiter>>,
}

/// A running redirect listener.
#[derive(Debug)]
pub struct RedirectServer {
    shared: Arc<Shared>,
    /// The redirect URI to send to the provider (with the real port).
    pub redirect_uri: url::Url,
    stop: CancellationToken,
    /// The fleet's store, through which a redirect that reached another
    /// instance comes back here (see [`RedirectServer::sharing`]).
    relay: Option<RedisStore>,
}

/// How often a sign-in started here looks for a redirect that reached
/// another instance.
const RELAY_POLL: Duration = Duration::from_millis(300);
/// The longest a sign-in waits for its redirect through the fleet.
const RELAY_WAIT: Duration = Duration::from_secs(20 * 60);

/// What a redirect brought, as relayed to the instance that started it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Relayed {
    code: Option<String>,
    error: Option<String>,
    description: Option<String>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "redirect_uri {0} must be http:// on localhost or a loopback address to be received here; use --flow paste or --flow device instead"
    )]
    NotLoopback(url::Url),
    #[error(
        "cannot listen for the redirect on {addr} ({source}); is another `mailgate login`, or a gateway with its portal on that port, running? With the gateway running, sign in through its portal instead; else free the port or change redirect_uri"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl RedirectServer {
    /// Binds the listener for `configured` (the provider's redirect URI).
    pub async fn bind(configured: &url::Url) -> Result<RedirectServer, BindError> {
        let localhost = matches!(configured.host(), Some(url::Host::Domain(d)) if d.eq_ignore_ascii_case("localhost"));
        let ip: std::net::IpAddr = match configured.host() {
            Some(url::Host::Domain(_)) if localhost => [127, 0, 0, 1].into(),
            Some(url::Host::Ipv4(a)) if a.is_loopback() => a.into(),
            Some(url::Host::Ipv6(a)) if a.is_loopback() => a.into(),
            _ => return Err(BindError::NotLoopback(configured.clone())),
        };
        if configured.scheme() != "http" {
            return Err(BindError::NotLoopback(configured.clone()));
        }
        // RFC 8252 §7.3: any port for a loopback IP literal without one.
        let port = configured.port().unwrap_or(match configured.host() {
            Some(url::Host::Domain(_)) => 80,
            _ => 0,
        });
        let addr = SocketAddr::new(ip, port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| BindError::Bind { addr, source })?;
        let actual = listener
            .local_addr()
            .map_err(|source| BindError::Bind { addr, source })?;
        // A browser may resolve `localhost` to ::1 as well: that port is
        // ours too, or nobody else's could be taken for our redirect. Only a
        // machine without IPv6 on loopback is excused.
        let v6 = if localhost {
            let addr6 = SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), actual.port());
            match tokio::net::TcpListener::bind(addr6).await {
                Ok(l) => Some(l),
                Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => None,
                Err(source) => {
                    return Err(BindError::Bind {
                        addr: addr6,
                        source,
                    });
                }
            }
        } else {
            None
        };
        let mut redirect_uri = configured.clone();
        if configured.port().is_none() && actual.port() != 80 {
            let _ = redirect_uri.set_port(Some(actual.port()));
        }
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
        });
        let path = match configured.path() {
            "" => "/".to_owned(),
            p => p.to_owned(),
        };
        let app = Router::new()
            .route(&path, axum::routing::get(redirected))
            .with_state(shared.clone());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        for l in std::iter::once(listener).chain(v6) {
            let (app, stopped) = (app.clone(), stopped.clone());
            tokio::spawn(async move {
                let _ = axum::serve(l, app)
                    .with_graceful_shutdown(async move { stopped.cancelled().await })
                    .await;
            });
        }
        Ok(RedirectServer {
            shared,
            redirect_uri,
            stop,
            relay: None,
        })
    }

    /// A receiver without a listener of its own, for `redirect_uri`: the
    /// web portal serves that path and hands the redirects that are not its
    /// own sign-ins to [`RedirectServer::deliver`].
    pub fn mounted(redirect_uri: url::Url) -> RedirectServer {
        RedirectServer {
            shared: Arc::new(Shared::default()),
            redirect_uri,
            stop: CancellationToken::new(),
            relay: None,
        }
    }

    /// Shares the sign-ins through the fleet's Redis: the redirect of a
    /// sign-in started here may reach any instance (behind a load
    /// balancer), which relays it here. Redis sees only names and blobs
    /// derived from each sign-in's `state` (see [`crate::accounts::shared`]).
    pub fn sharing(mut self, store: Option<RedisStore>) -> RedirectServer {
        self.relay = store;
        self
    }

    /// Delivers a redirect that arrived elsewhere (see
    /// [`RedirectServer::mounted`]): to a sign-in waiting here, else,
    /// relayed through the fleet's store, to the instance that started it.
    /// The page to show, or `None` when no instance expects its `state`.
    pub async fn deliver(
        &self,
        query: &HashMap<String, String>,
    ) -> Option<(StatusCode, Html<String>)> {
        let state = query.get("state").map(String::as_str).unwrap_or("");
        if self.expects(state) {
            return Some(deliver(&self.shared, query));
        }
        let redis = self.relay.as_ref()?;
        if state.is_empty() {
            return None;
        }
        let marker = Sealer::new("redirect", state.as_bytes());
        match shared::get::<bool>(redis, &marker, false).await {
            Ok(Some(true)) => {}
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look up a redirect in the shared store");
                return Some(store_down());
            }
        }
        let relayed = Relayed {
            code: query.get("code").cloned(),
            error: query.get("error").cloned(),
            description: query.get("error_description").cloned(),
        };
        let code = Sealer::new("redirect-code", state.as_bytes());
        match shared::put(redis, &code, &relayed, RELAY_WAIT, true).await {
            Ok(_) => {
                tracing::info!("redirect relayed to the instance that started the sign-in");
                Some(reply_for(&outcome(query)))
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot relay a redirect through the shared store");
                Some(store_down())
            }
        }
    }

    /// Whether a sign-in with this `state` is waiting here.
    pub fn expects(&self, state: &str) -> bool {
        let pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        pending
            .keys()
            .any(|k| bool::from(k.as_bytes().ct_eq(state.as_bytes())))
    }

    /// Registers a sign-in by its `state`; the receiver gets its code.
    pub fn expect(
        &self,
        state: &SecretString,
    ) -> oneshot::Receiver<Result<SecretString, RedirectError>> {
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            pending.insert(state.expose_secret().to_owned(), tx);
        }
        if let Some(redis) = &self.relay {
            tokio::spawn(relay(
                redis.clone(),
                self.shared.clone(),
                state.expose_secret().to_owned(),
            ));
        }
        rx
    }

    /// Forgets a sign-in (timed out or finished).
    pub fn forget(&self, state: &SecretString) {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        pending.remove(state.expose_secret());
    }
}

impl Drop for RedirectServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn page(title: &str, text: &str) -> Html<String> {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>mailgate: {t}</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\"><h1>{t}</h1><p>{x}</p></body></html>",
        t = esc(title),
        x = esc(text)
    ))
}

async fn redirected(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> (StatusCode, Html<String>) {
    deliver(&shared, &q)
}

/// The waiter of `state`, taken out.
fn take_waiter(shared: &Shared, state: &str) -> Option<Waiter> {
    let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
    let key = pending
        .keys()
        .find(|k| bool::from(k.as_bytes().ct_eq(state.as_bytes())))
        .cloned();
    // An unknown state (a stale tab, a forged request) changes nothing: the
    // sign-ins under way go on waiting.
    pending.remove(&key?)
}

/// Announces the sign-in of `state` to the fleet and waits for a redirect
/// that another instance relays; gives up when the sign-in is over here
/// (delivered, forgotten, or timed out).
async fn relay(redis: RedisStore, shared: Arc<Shared>, state: String) {
    let marker = Sealer::new("redirect", state.as_bytes());
    let code = Sealer::new("redirect-code", state.as_bytes());
    if let Err(e) = shared::put(&redis, &marker, &true, RELAY_WAIT, false).await {
        tracing::warn!(error = %e, "the sign-in is not shared: its redirect must come back to this instance");
        return;
    }
    let waiting = |shared: &Shared| {
        shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&state)
            .is_some_and(|w| !w.is_closed())
    };
    let deadline = tokio::time::Instant::now() + RELAY_WAIT;
    while waiting(&shared) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(RELAY_POLL).await;
        match shared::get::<Relayed>(&redis, &code, true).await {
            Ok(Some(r)) => {
                let q: HashMap<String, String> = [
                    ("code", r.code),
                    ("error", r.error),
                    ("error_description", r.description),
                ]
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_owned(), v?)))
                .collect();
                if let Some(w) = take_waiter(&shared, &state) {
                    tracing::info!("a redirect relayed by another instance arrived");
                    let _ = w.send(outcome(&q));
                }
                break;
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "polling the shared store for a redirect"),
        }
    }
    let _ = redis.forget(marker.name()).await;
}

/// What a redirect's query brought.
fn outcome(q: &HashMap<String, String>) -> Result<SecretString, RedirectError> {
    if let Some(error) = q.get("error") {
        Err(RedirectError::Provider {
            error: error.clone(),
            description: q.get("error_description").cloned().unwrap_or_default(),
        })
    } else if let Some(code) = q.get("code") {
        Ok(SecretString::from(code.clone()))
    } else {
        Err(RedirectError::NoCode)
    }
}

/// The page shown when the fleet's store cannot be used.
fn store_down() -> (StatusCode, Html<String>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        page(
            "Try again",
            "The gateway cannot reach its shared store now. Reload this page in a moment; if it keeps failing, tell your administrator (the error is in the gateway's log).",
        ),
    )
}

/// The page shown for a redirect's outcome.
fn reply_for(result: &Result<SecretString, RedirectError>) -> (StatusCode, Html<String>) {
    match result {
        Ok(_) => (
            StatusCode::OK,
            page(
                "Signed in",
                "mailgate received the authorisation. You can close this window and return to your mail program.",
            ),
        ),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            page("Sign-in failed", &e.to_string()),
        ),
    }
}

fn deliver(shared: &Shared, q: &HashMap<String, String>) -> (StatusCode, Html<String>) {
    let state = q.get("state").cloned().unwrap_or_default();
    let Some(waiter) = take_waiter(shared, &state) else {
        tracing::info!("redirect with an unknown state ignored");
        return (
            StatusCode::BAD_REQUEST,
            page(
                "Sign-in not recognised",
                "This sign-in is unknown or expired. Start again from your mail client or with mailgate login.",
            ),
        );
    };
    let result = outcome(q);
    let reply = reply_for(&result);
    let _ = waiter.send(result);
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `localhost` holds the port on 127.0.0.1 and on [::1], so no other
    /// program can receive the redirect on either.
    #[tokio::test]
    async fn localhost_holds_both_loopback_addresses() {
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let uri = url::Url::parse(&format!("http://localhost:{free}/")).expect("url");
        let server = RedirectServer::bind(&uri).await.expect("bind");
        assert!(std::net::TcpListener::bind(("127.0.0.1", free)).is_err());
        // In use (ours), or no IPv6 on this machine: either way nobody
        // else can take it.
        assert!(
            std::net::TcpListener::bind(("::1", free)).is_err(),
            "[::1]:{free} was left to anyone"
        );
        drop(server);
    }
}
