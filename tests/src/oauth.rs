//! A fake OAuth 2.0 authorisation server on 127.0.0.1: the token endpoint's
//! refresh grant and an RFC 7662 introspection endpoint, with knobs to make
//! it misbehave the ways real providers do.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use serde_json::json;

/// How the token endpoint answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// `400 {"error":"invalid_grant"}`
    InvalidGrant,
    /// `401 {"error":"invalid_client"}`
    InvalidClient,
    /// `500` with an HTML body.
    Http500,
    /// `200` with a body that is not JSON.
    MalformedJson,
    /// Answers normally after this delay.
    Slow(Duration),
}

#[derive(Debug)]
struct Inner {
    /// refresh token → user
    refresh: HashMap<String, String>,
    /// access token → (user, expiry)
    access: HashMap<String, (String, Instant)>,
    lifetime: Duration,
    rotate: bool,
    mode: Mode,
    client_id: String,
    client_secret: Option<String>,
    last_access: Option<String>,
}

#[derive(Debug)]
pub struct Shared {
    inner: Mutex<Inner>,
    refreshes: AtomicUsize,
    introspections: AtomicUsize,
    counter: AtomicU64,
}

/// A running fake authorisation server.
#[derive(Debug, Clone)]
pub struct FakeOAuth {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

pub const CLIENT_ID: &str = "test-client";

impl FakeOAuth {
    pub async fn start() -> FakeOAuth {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                refresh: HashMap::new(),
                access: HashMap::new(),
                lifetime: Duration::from_secs(3600),
                rotate: false,
                mode: Mode::Normal,
                client_id: CLIENT_ID.into(),
                client_secret: None,
                last_access: None,
            }),
            refreshes: AtomicUsize::new(0),
            introspections: AtomicUsize::new(0),
            counter: AtomicU64::new(1),
        });
        let app = Router::new()
            .route("/token", post(token))
            .route("/introspect", post(introspect))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeOAuth { addr, shared }
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn introspect_url(&self) -> String {
        format!("http://{}/introspect", self.addr)
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap()
    }

    /// Creates a refresh token for `user`.
    pub fn issue_refresh_token(&self, user: &str) -> String {
        let n = self.shared.counter.fetch_add(1, Ordering::SeqCst);
        let rt = format!("rt-{n}-{}", user.replace('@', "_"));
        self.inner().refresh.insert(rt.clone(), user.to_owned());
        rt
    }

    /// Lifetime of access tokens issued from now on.
    pub fn set_lifetime(&self, d: Duration) {
        self.inner().lifetime = d;
    }

    /// Rotate refresh tokens on every refresh (as Microsoft does).
    pub fn set_rotate(&self, rotate: bool) {
        self.inner().rotate = rotate;
    }

    pub fn set_mode(&self, mode: Mode) {
        self.inner().mode = mode;
    }

    /// Require this client secret.
    pub fn set_client_secret(&self, s: Option<&str>) {
        self.inner().client_secret = s.map(Into::into);
    }

    /// Number of refresh grants answered with a token.
    pub fn refresh_count(&self) -> usize {
        self.shared.refreshes.load(Ordering::SeqCst)
    }

    pub fn introspection_count(&self) -> usize {
        self.shared.introspections.load(Ordering::SeqCst)
    }

    /// The user of a currently valid access token.
    pub fn check_access(&self, token: &str) -> Option<String> {
        let inner = self.inner();
        inner
            .access
            .get(token)
            .filter(|(_, exp)| *exp > Instant::now())
            .map(|(u, _)| u.clone())
    }

    /// Invalidates every access token while the gateway still believes them
    /// valid (what a provider does on revocation or a server-side expiry).
    pub fn revoke_access_tokens(&self) {
        self.inner().access.clear();
    }

    /// Whether a refresh token is still accepted.
    pub fn refresh_token_valid(&self, rt: &str) -> bool {
        self.inner().refresh.contains_key(rt)
    }

    /// The most recently issued access token.
    pub fn last_access_token(&self) -> Option<String> {
        self.inner().last_access.clone()
    }

    /// Issues an access token directly (for direct upstream logins).
    pub fn issue_access_token(&self, user: &str) -> String {
        let n = self.shared.counter.fetch_add(1, Ordering::SeqCst);
        let at = format!("at-{n}-{}", user.replace('@', "_"));
        let mut inner = self.inner();
        let exp = Instant::now() + inner.lifetime;
        inner.access.insert(at.clone(), (user.to_owned(), exp));
        at
    }
}

fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": code, "error_description": description})),
    )
        .into_response()
}

async fn token(
    State(s): State<Arc<Shared>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mode = s.inner.lock().unwrap().mode.clone();
    match mode {
        Mode::Normal => {}
        Mode::Slow(d) => tokio::time::sleep(d).await,
        Mode::InvalidGrant => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "AADSTS70008: The refresh token has expired",
            );
        }
        Mode::InvalidClient => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "AADSTS7000222: The provided client secret keys are expired",
            );
        }
        Mode::Http500 => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/html")],
                "<html>oops</html>",
            )
                .into_response();
        }
        Mode::MalformedJson => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "{\"access_token\": ",
            )
                .into_response();
        }
    }
    let mut inner = s.inner.lock().unwrap();
    if form.get("client_id") != Some(&inner.client_id)
        || (inner.client_secret.is_some()
            && form.get("client_secret") != inner.client_secret.as_ref())
    {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client");
    }
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "");
    }
    let Some(rt) = form.get("refresh_token") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "no refresh_token",
        );
    };
    let Some(user) = inner.refresh.get(rt).cloned() else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "unknown refresh token",
        );
    };
    let n = s.counter.fetch_add(1, Ordering::SeqCst);
    let at = format!("at-{n}-{}", user.replace('@', "_"));
    let lifetime = inner.lifetime;
    inner
        .access
        .insert(at.clone(), (user.clone(), Instant::now() + lifetime));
    inner.last_access = Some(at.clone());
    let mut body = json!({
        "access_token": at,
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs(),
        "scope": form.get("scope").cloned().unwrap_or_default(),
    });
    if inner.rotate {
        inner.refresh.remove(rt);
        let new_rt = format!("rt-{n}-{}", user.replace('@', "_"));
        inner.refresh.insert(new_rt.clone(), user);
        body["refresh_token"] = json!(new_rt);
    }
    s.refreshes.fetch_add(1, Ordering::SeqCst);
    (StatusCode::OK, Json(body)).into_response()
}

/// RFC 7662 token introspection, as Dovecot's oauth2 passdb asks it.
async fn introspect(
    State(s): State<Arc<Shared>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    s.introspections.fetch_add(1, Ordering::SeqCst);
    let inner = s.inner.lock().unwrap();
    let token = form.get("token").cloned().unwrap_or_default();
    match inner
        .access
        .get(&token)
        .filter(|(_, exp)| *exp > Instant::now())
    {
        Some((user, _)) => Json(json!({"active": true, "username": user})).into_response(),
        None => Json(json!({"active": false})).into_response(),
    }
}
