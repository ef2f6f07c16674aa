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

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Html;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

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
        })
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
                "This sign-in is unknown or expired. Start again with mailgate login.",
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
        assert_eq!(
            std::net::TcpListener::bind(("127.0.0.1", free))
                .expect_err("the port is held")
                .kind(),
            std::io::ErrorKind::AddrInUse
        );
        // In use (ours), or no IPv6 on this machine: either way nobody
        // else can take it.
        assert!(
            std::net::TcpListener::bind(("::1", free)).is_err(),
            "[::1]:{free} was left to anyone"
        );
        drop(server);
    }
}
