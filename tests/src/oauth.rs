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
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use sha2::{Digest, Sha256};

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
    /// `200` with a JSON-looking body of this many bytes, streamed in 64
    /// KiB chunks without a length (a hostile or broken endpoint).
    Huge(u64),
    /// A network between: the request takes this long to arrive, and the
    /// answer as long again to leave after the grant is committed (a
    /// rotated refresh token is spent before the client has the new one).
    Network(Duration),
    /// Any OAuth error answer: this status, `error` and
    /// `error_description` (an AADSTS or Google error on demand).
    Error {
        status: u16,
        error: String,
        description: String,
    },
}

/// How `/authorize` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeMode {
    /// Redirects with a code and the request's state.
    Approve,
    /// Redirects with `error=access_denied`.
    Deny,
    /// Redirects with a code and a different state (a forged redirect).
    WrongState,
    /// Shows a consent page whose `#approve` link carries the code back,
    /// as a provider does before its redirect (the browser waits there).
    Consent,
}

/// How the device flow's token polls are answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceMode {
    /// `authorization_pending` for this many polls, then tokens.
    ApproveAfter(u32),
    /// One `slow_down`, then tokens.
    SlowDownOnce,
    /// `access_denied` (the user declined).
    Decline,
    /// `expired_token`.
    Expire,
}

/// The tenant an Entra-like ID token comes from, and what its directory
/// says of the user.
#[derive(Debug, Clone, Default)]
pub struct Entra {
    /// The tenant ID (`tid`).
    pub tid: String,
    /// The user's mail attribute, which that tenant's administrators set
    /// to anything (`email`); `None`: the sign-in name.
    pub mail: Option<String>,
    /// `xms_edov`: the tenant verified the mail's domain.
    pub email_domain_verified: bool,
}

#[derive(Debug, Clone)]
struct Code {
    user: String,
    challenge: String,
    redirect_uri: String,
    scope: String,
    nonce: Option<String>,
}

#[derive(Debug)]
struct Inner {
    authorize_mode: AuthorizeMode,
    device_mode: DeviceMode,
    /// The user the device flow and the codes without login_hint approve.
    default_user: String,
    codes: HashMap<String, Code>,
    /// device_code → (polls so far, requested scope)
    devices: HashMap<String, (u32, String)>,
    /// Who signs in at `/authorize` and the device page, whatever the
    /// login_hint (a person signed in to another account in the browser).
    sign_in_as: Option<String>,
    /// ID tokens are issued when `openid` is asked for.
    id_tokens: bool,
    /// A refresh grant whose scope contains this is refused with
    /// `invalid_grant` and AADSTS65001 (the consent lacks that resource).
    unconsented: Option<String>,
    /// The scope each access token was issued for (when it was asked for
    /// one at the token endpoint).
    scopes: HashMap<String, String>,
    /// (delegate, shared mailbox) pairs: the delegate's token opens the
    /// shared mailbox (Exchange's FullAccess / Send As), lower-cased.
    delegations: Vec<(String, String)>,
    last_authorize: HashMap<String, String>,
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
    issuer: String,
    /// The service account the JWT bearer grant accepts: its
    /// `client_email` and the public half of its key.
    service_account: Option<(String, Vec<u8>)>,
    /// Whether the service account has domain-wide delegation (Google
    /// answers `unauthorized_client` without it).
    delegated: bool,
    /// Every JWT bearer assertion accepted so far (a reused one is refused).
    assertions: std::collections::HashSet<String>,
    /// The `sub` of each accepted assertion, in order.
    subjects: Vec<String>,
    /// The certificate credential the client must authenticate with: the
    /// certificate's public key (PEM) and its `x5t#S256`.
    client_certificate: Option<(Vec<u8>, String)>,
    /// (grant type, `alg`) of each accepted client assertion, in order.
    client_assertions: Vec<(String, String)>,
    /// Every client assertion's `jti` seen: one used twice is a replay
    /// (RFC 7523 §3), which Entra refuses.
    client_jtis: std::collections::HashSet<String>,
    /// ID tokens as Entra issues them: from this tenant (`tid`, issuer
    /// `{issuer}/{tid}/v2.0`), without `email_verified`.
    entra: Option<Entra>,
}

#[derive(Debug)]
pub struct Shared {
    inner: Mutex<Inner>,
    refreshes: AtomicUsize,
    /// Refresh grants refused because the refresh token was unknown (used
    /// already under strict rotation, or never issued).
    refused_refreshes: AtomicUsize,
    /// Token endpoint requests received, answered or not yet.
    token_requests: AtomicUsize,
    introspections: AtomicUsize,
    /// Bytes of [`Mode::Huge`] answers that the client took.
    huge_sent: AtomicU64,
    counter: AtomicU64,
    grants: Mutex<HashMap<String, usize>>,
    issued: Mutex<Vec<String>>,
    refreshed_at: Mutex<Vec<Instant>>,
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
                issuer: String::new(),
                service_account: None,
                delegated: true,
                assertions: Default::default(),
                subjects: Vec::new(),
                client_certificate: None,
                client_assertions: Vec::new(),
                client_jtis: std::collections::HashSet::new(),
                entra: None,
                authorize_mode: AuthorizeMode::Approve,
                device_mode: DeviceMode::ApproveAfter(1),
                default_user: "alice@example.test".into(),
                codes: HashMap::new(),
                devices: HashMap::new(),
                sign_in_as: None,
                id_tokens: true,
                unconsented: None,
                scopes: HashMap::new(),
                delegations: Vec::new(),
                last_authorize: HashMap::new(),
            }),
            refreshes: AtomicUsize::new(0),
            refused_refreshes: AtomicUsize::new(0),
            token_requests: AtomicUsize::new(0),
            introspections: AtomicUsize::new(0),
            huge_sent: AtomicU64::new(0),
            counter: AtomicU64::new(1),
            grants: Mutex::new(HashMap::new()),
            issued: Mutex::new(Vec::new()),
            refreshed_at: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/token", post(token))
            .route("/introspect", post(introspect))
            .route("/authorize", axum::routing::get(authorize))
            .route("/devicecode", post(devicecode))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        shared.inner.lock().unwrap().issuer = format!("http://{addr}");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeOAuth { addr, shared }
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn authorize_url(&self) -> String {
        format!("http://{}/authorize", self.addr)
    }

    pub fn device_code_url(&self) -> String {
        format!("http://{}/devicecode", self.addr)
    }

    /// Bytes of [`Mode::Huge`] answers produced so far (the client read
    /// them, or they sit in socket buffers).
    pub fn huge_sent(&self) -> u64 {
        self.shared.huge_sent.load(Ordering::SeqCst)
    }

    /// ID tokens as Entra issues them, from `entra`'s tenant (`None`: the
    /// plain OpenID Connect ones).
    pub fn set_entra(&self, entra: Option<Entra>) {
        self.inner().entra = entra;
    }

    pub fn set_authorize_mode(&self, m: AuthorizeMode) {
        self.inner().authorize_mode = m;
    }

    pub fn set_device_mode(&self, m: DeviceMode) {
        self.inner().device_mode = m;
    }

    /// Every sign-in from now on is `user`'s (`None`: the login_hint's, or
    /// the default user's).
    pub fn set_sign_in_as(&self, user: Option<&str>) {
        self.inner().sign_in_as = user.map(Into::into);
    }

    /// Whether ID tokens are issued for `openid` requests (a provider
    /// without OpenID Connect issues none).
    pub fn set_id_tokens(&self, on: bool) {
        self.inner().id_tokens = on;
    }

    /// The issuer of its ID tokens.
    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The query parameters of the last `/authorize` request.
    pub fn last_authorize(&self) -> HashMap<String, String> {
        self.inner().last_authorize.clone()
    }

    /// Token requests by grant type.
    pub fn grants(&self, grant_type: &str) -> usize {
        self.shared
            .grants
            .lock()
            .unwrap()
            .get(grant_type)
            .copied()
            .unwrap_or(0)
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
    /// Refresh grants whose scope contains `scope` are refused as Entra
    /// refuses a resource the user never consented to (`invalid_grant`,
    /// AADSTS65001); `None` lifts it.
    pub fn set_unconsented(&self, scope: Option<&str>) {
        self.inner().unconsented = scope.map(str::to_owned);
    }

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

    /// Accepts JWT bearer assertions (RFC 7523) signed by `public_pem`'s
    /// private half and issued by `client_email`.
    pub fn set_service_account(&self, client_email: &str, public_pem: &[u8]) {
        jsonwebtoken::DecodingKey::from_rsa_pem(public_pem).unwrap();
        self.inner().service_account = Some((client_email.to_owned(), public_pem.to_vec()));
    }

    /// Requires certificate credentials: every token request must carry a
    /// client assertion signed by `public_pem`'s private half that names
    /// the certificate by `x5t_s256`, as Entra checks them.
    pub fn set_client_certificate(&self, public_pem: &[u8], x5t_s256: &str) {
        jsonwebtoken::DecodingKey::from_rsa_pem(public_pem).unwrap();
        self.inner().client_certificate = Some((public_pem.to_vec(), x5t_s256.to_owned()));
    }

    /// (grant type, `alg`) of each accepted client assertion, in order.
    pub fn client_assertions(&self) -> Vec<(String, String)> {
        self.inner().client_assertions.clone()
    }

    /// Whether the service account has domain-wide delegation.
    pub fn set_delegated(&self, on: bool) {
        self.inner().delegated = on;
    }

    /// The mailboxes (`sub`) of the accepted JWT bearer assertions.
    pub fn assertion_subjects(&self) -> Vec<String> {
        self.inner().subjects.clone()
    }

    /// Number of refresh grants refused for an unknown or used refresh
    /// token (under strict rotation: a refresh with a token already spent).
    pub fn refused_refresh_count(&self) -> usize {
        self.shared.refused_refreshes.load(Ordering::SeqCst)
    }

    /// Token endpoint requests received so far, the ones still being
    /// answered included.
    pub fn token_request_count(&self) -> usize {
        self.shared.token_requests.load(Ordering::SeqCst)
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

    /// Grants `delegate` the rights on the mailbox `shared` (what an
    /// administrator's Add-MailboxPermission and Add-RecipientPermission do).
    pub fn delegate(&self, delegate: &str, shared: &str) {
        self.inner()
            .delegations
            .push((delegate.to_lowercase(), shared.to_lowercase()));
    }

    /// Whether a token of `owner` may open `mailbox`: its own, an app-only
    /// token (`*`), or a mailbox delegated to it.
    pub fn may_open(&self, owner: &str, mailbox: &str) -> bool {
        owner == "*"
            || owner.eq_ignore_ascii_case(mailbox)
            || self
                .inner()
                .delegations
                .iter()
                .any(|(d, s)| d.eq_ignore_ascii_case(owner) && s.eq_ignore_ascii_case(mailbox))
    }

    /// The scope `token` was issued for, if one was asked for.
    pub fn access_scope(&self, token: &str) -> Option<String> {
        self.inner().scopes.get(token).cloned()
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

    /// When each refresh grant was answered.
    pub fn refresh_times(&self) -> Vec<Instant> {
        self.shared.refreshed_at.lock().unwrap().clone()
    }

    /// Every access and refresh token issued so far (for leak checks).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.issued.lock().unwrap().clone()
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
    s.token_requests.fetch_add(1, Ordering::SeqCst);
    let mode = s.inner.lock().unwrap().mode.clone();
    if let Mode::Network(d) = mode {
        tokio::time::sleep(d).await;
        let answer = grant(&s, form).await;
        tokio::time::sleep(d).await;
        return answer;
    }
    grant(&s, form).await
}

async fn grant(s: &Arc<Shared>, form: HashMap<String, String>) -> Response {
    let mode = s.inner.lock().unwrap().mode.clone();
    match mode {
        Mode::Normal | Mode::Network(_) => {}
        Mode::Huge(size) => {
            const CHUNK: usize = 64 * 1024;
            let shared = s.clone();
            let chunks = futures_util::stream::unfold(0u64, move |sent| {
                let shared = shared.clone();
                async move {
                    if sent >= size {
                        return None;
                    }
                    let n = (size - sent).min(CHUNK as u64);
                    let mut chunk = vec![b' '; n as usize];
                    if sent == 0 {
                        chunk[0] = b'{';
                    }
                    shared.huge_sent.fetch_add(n, Ordering::SeqCst);
                    Some((Ok::<_, std::io::Error>(chunk), sent + n))
                }
            });
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                axum::body::Body::from_stream(chunks),
            )
                .into_response();
        }
        Mode::Slow(d) => tokio::time::sleep(d).await,
        Mode::InvalidGrant => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "AADSTS70008: The refresh token has expired",
            );
        }
        Mode::Error {
            status,
            error,
            description,
        } => {
            return oauth_error(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                &error,
                &description,
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
    if form.get("grant_type").map(String::as_str) == Some(JWT_BEARER) {
        // A service account's grant: no client_id, the assertion is the
        // credential.
        *s.grants
            .lock()
            .unwrap()
            .entry(JWT_BEARER.to_owned())
            .or_default() += 1;
        let assertion = form.get("assertion").cloned().unwrap_or_default();
        let token_url = format!("{}/token", inner.issuer);
        return match check_assertion(&inner, &assertion, &token_url) {
            Err(why) => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", &why),
            Ok(_) if !inner.delegated => oauth_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized_client",
                "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested.",
            ),
            Ok(_) if !inner.assertions.insert(assertion) => oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "the assertion was used already",
            ),
            Ok(sub) => {
                inner.subjects.push(sub.clone());
                issue(s, &mut inner, &sub, false, None, form.get("scope"))
            }
        };
    }
    let grant_type = form.get("grant_type").cloned().unwrap_or_default();
    if form.get("client_id").is_some_and(|c| *c != inner.client_id)
        || (!form.contains_key("client_id") && !form.contains_key("client_assertion"))
        || (inner.client_secret.is_some()
            && form.get("client_secret") != inner.client_secret.as_ref())
    {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client");
    }
    if let Some((public, x5t)) = inner.client_certificate.clone() {
        let token_url = format!("{}/token", inner.issuer);
        match check_client_assertion(&inner.client_id, &public, &x5t, &form, &token_url) {
            Ok((_, jti)) if !inner.client_jtis.insert(jti.clone()) => {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "AADSTS700027: The client assertion was replayed (its jti was used before)",
                );
            }
            Ok((alg, _)) => inner.client_assertions.push((grant_type.clone(), alg)),
            Err(why) => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", &why),
        }
    } else if form.contains_key("client_assertion") {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS700027: no certificate is registered for this client",
        );
    }
    *s.grants
        .lock()
        .unwrap()
        .entry(grant_type.clone())
        .or_default() += 1;
    match grant_type.as_str() {
        "refresh_token" => {}
        "authorization_code" => {
            let code = form.get("code").and_then(|c| inner.codes.remove(c));
            let Some(code) = code else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown or used authorization code",
                );
            };
            if form.get("redirect_uri") != Some(&code.redirect_uri) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "redirect_uri does not match",
                );
            }
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let digest = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
            if digest != code.challenge {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "AADSTS501481: The Code_Verifier does not match the code_challenge",
                );
            }
            let id = id_token_for(&inner, &code.scope, &code.user, code.nonce.as_deref());
            return issue(s, &mut inner, &code.user, true, id, form.get("scope"));
        }
        "urn:ietf:params:oauth:grant-type:device_code" => {
            let device = form.get("device_code").cloned().unwrap_or_default();
            let mode = inner.device_mode.clone();
            let Some((polls, scope)) = inner.devices.get_mut(&device) else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown device code",
                );
            };
            *polls += 1;
            let (polls, scope) = (*polls, scope.clone());
            let pending = |code: &str| oauth_error(StatusCode::BAD_REQUEST, code, "");
            match mode {
                DeviceMode::ApproveAfter(n) if polls <= n => {
                    return pending("authorization_pending");
                }
                DeviceMode::SlowDownOnce if polls == 1 => return pending("slow_down"),
                DeviceMode::Decline => return pending("access_denied"),
                DeviceMode::Expire => return pending("expired_token"),
                _ => {}
            }
            inner.devices.remove(&device);
            let user = inner
                .sign_in_as
                .clone()
                .unwrap_or_else(|| inner.default_user.clone());
            let id = id_token_for(&inner, &scope, &user, None);
            return issue(s, &mut inner, &user, true, id, form.get("scope"));
        }
        "client_credentials" => {
            if inner.client_secret.is_none() && inner.client_certificate.is_none() {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "a confidential client is required",
                );
            }
            return issue(s, &mut inner, "*", false, None, form.get("scope"));
        }
        _ => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", ""),
    }
    let Some(rt) = form.get("refresh_token") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "no refresh_token",
        );
    };
    let Some(user) = inner.refresh.get(rt).cloned() else {
        s.refused_refreshes.fetch_add(1, Ordering::SeqCst);
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "unknown refresh token",
        );
    };
    if let Some(u) = &inner.unconsented
        && form.get("scope").is_some_and(|sc| sc.contains(u.as_str()))
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "AADSTS65001: The user or administrator has not consented to use the application.",
        );
    }
    let n = s.counter.fetch_add(1, Ordering::SeqCst);
    let at = format!("at-{n}-{}", user.replace('@', "_"));
    let lifetime = inner.lifetime;
    inner
        .access
        .insert(at.clone(), (user.clone(), Instant::now() + lifetime));
    inner.last_access = Some(at.clone());
    if let Some(scope) = form.get("scope") {
        inner.scopes.insert(at.clone(), scope.clone());
    }
    s.issued.lock().unwrap().push(at.clone());
    let mut body = json!({
        "access_token": at,
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs(),
        "scope": form.get("scope").cloned().unwrap_or_default(),
    });
    if inner.rotate {
        inner.refresh.remove(rt);
        let new_rt = format!("rt-{n}-{}", user.replace('@', "_"));
        s.issued.lock().unwrap().push(new_rt.clone());
        inner.refresh.insert(new_rt.clone(), user);
        body["refresh_token"] = json!(new_rt);
    }
    s.refreshes.fetch_add(1, Ordering::SeqCst);
    s.refreshed_at.lock().unwrap().push(Instant::now());
    (StatusCode::OK, Json(body)).into_response()
}

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Checks a JWT bearer assertion as Google does: RS256 by the service
/// account's key, `iss` its address, `aud` this token endpoint, a `scope`,
/// `iat`/`exp` now and at most an hour apart. The `sub` it names.
fn check_assertion(inner: &Inner, assertion: &str, token_url: &str) -> Result<String, String> {
    let Some((email, public)) = &inner.service_account else {
        return Err("no service account is set up".into());
    };
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(public).map_err(|e| e.to_string())?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&[token_url]);
    v.set_issuer(&[email]);
    v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    v.leeway = 0;
    let data = jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &v)
        .map_err(|e| format!("Invalid JWT: {e}"))?;
    let c = data.claims;
    let (iat, exp) = (
        c["iat"].as_u64().unwrap_or(0),
        c["exp"].as_u64().unwrap_or(0),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if exp <= iat || exp - iat > 3600 || iat > now + 60 {
        return Err("Invalid JWT: iat/exp: at most an hour, from now".into());
    }
    if c["scope"].as_str().is_none_or(str::is_empty) {
        return Err("Invalid JWT: no scope".into());
    }
    Ok(c["sub"].as_str().unwrap_or_default().to_owned())
}

/// Checks a client assertion as Entra does (certificate credentials):
/// `client_assertion_type` jwt-bearer, PS256 or RS256 by the registered
/// certificate's key, `x5t#S256` naming that certificate, `iss` and `sub`
/// the client ID, `aud` this token endpoint, `exp` in the future and
/// `nbf` not after now, a `jti`. The `alg` it used and its `jti`.
fn check_client_assertion(
    client_id: &str,
    public: &[u8],
    x5t_s256: &str,
    form: &HashMap<String, String>,
    token_url: &str,
) -> Result<(String, String), String> {
    let (Some(kind), Some(assertion)) = (
        form.get("client_assertion_type"),
        form.get("client_assertion"),
    ) else {
        return Err("AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or 'client_secret'".into());
    };
    if kind != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
        return Err(format!(
            "AADSTS700024: unsupported client_assertion_type {kind}"
        ));
    }
    let header = jsonwebtoken::decode_header(assertion)
        .map_err(|e| format!("AADSTS50027: Invalid JWT: {e}"))?;
    if !matches!(
        header.alg,
        jsonwebtoken::Algorithm::PS256 | jsonwebtoken::Algorithm::RS256
    ) {
        return Err(format!(
            "AADSTS5002738: alg {:?} is not supported",
            header.alg
        ));
    }
    if header.x5t_s256.as_deref() != Some(x5t_s256) {
        return Err("AADSTS700027: The certificate with identifier used to sign the client assertion is not registered on application".into());
    }
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(public).map_err(|e| e.to_string())?;
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.set_audience(&[token_url]);
    v.set_issuer(&[client_id]);
    v.sub = Some(client_id.to_owned());
    v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    v.validate_nbf = true;
    v.leeway = 0;
    let data = jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &v).map_err(|e| {
        format!("AADSTS700027: Client assertion failed signature validation or its claims: {e}")
    })?;
    let Some(jti) = data.claims["jti"].as_str().filter(|j| !j.is_empty()) else {
        return Err("AADSTS700023: the client assertion has no jti".into());
    };
    Ok((format!("{:?}", header.alg), jti.to_owned()))
}

/// An ID token for `user` when `scope` asks for one (claims as Microsoft
/// and Google send them; the signature is a placeholder: mailgate takes
/// ID tokens only from the token endpoint, whose TLS vouches for them).
fn id_token_for(inner: &Inner, scope: &str, user: &str, nonce: Option<&str>) -> Option<String> {
    if !inner.id_tokens || !scope.split(' ').any(|s| s == "openid") {
        return None;
    }
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let mut claims = json!({
        "iss": inner.issuer,
        "aud": inner.client_id,
        "exp": exp,
        "iat": exp - 3600,
        "sub": format!("sub-{}", user.replace('@', "_")),
        "email": user,
        "email_verified": true,
        "preferred_username": user,
    });
    if let Some(e) = &inner.entra {
        claims["iss"] = json!(format!("{}/{}/v2.0", inner.issuer, e.tid));
        claims["tid"] = json!(e.tid);
        claims["email"] = json!(e.mail.as_deref().unwrap_or(user));
        if let Some(o) = claims.as_object_mut() {
            o.remove("email_verified");
        }
        if e.email_domain_verified {
            claims["xms_edov"] = json!(true);
        }
    }
    if let Some(n) = nonce {
        claims["nonce"] = json!(n);
    }
    let enc = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    Some(format!(
        "{}.{}.{}",
        enc(json!({"alg": "RS256", "typ": "JWT", "kid": "test"})),
        enc(claims),
        URL_SAFE_NO_PAD.encode("not-a-signature")
    ))
}

/// Issues an access token (and a refresh token, and an ID token) for `user`.
fn issue(
    s: &Shared,
    inner: &mut Inner,
    user: &str,
    with_refresh: bool,
    id_token: Option<String>,
    scope: Option<&String>,
) -> Response {
    let n = s.counter.fetch_add(1, Ordering::SeqCst);
    let tag = user.replace('@', "_");
    let at = format!("at-{n}-{tag}");
    let lifetime = inner.lifetime;
    inner
        .access
        .insert(at.clone(), (user.to_owned(), Instant::now() + lifetime));
    inner.last_access = Some(at.clone());
    if let Some(scope) = scope {
        inner.scopes.insert(at.clone(), scope.clone());
    }
    let mut body =
        json!({"access_token": at, "token_type": "Bearer", "expires_in": lifetime.as_secs()});
    if let Some(id) = id_token {
        body["id_token"] = json!(id);
    }
    if with_refresh {
        let rt = format!("rt-{n}-{tag}");
        s.issued.lock().unwrap().push(rt.clone());
        inner.refresh.insert(rt.clone(), user.to_owned());
        body["refresh_token"] = json!(rt);
    }
    (StatusCode::OK, Json(body)).into_response()
}

/// The authorization endpoint: approves at once by redirecting back.
async fn authorize(
    State(s): State<Arc<Shared>>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let mut inner = s.inner.lock().unwrap();
    inner.last_authorize = q.clone();
    let Some(redirect) = q.get("redirect_uri").and_then(|r| url::Url::parse(r).ok()) else {
        return (StatusCode::BAD_REQUEST, "no redirect_uri").into_response();
    };
    if q.get("client_id") != Some(&inner.client_id)
        || q.get("response_type").map(String::as_str) != Some("code")
        || q.get("code_challenge_method").map(String::as_str) != Some("S256")
    {
        return (StatusCode::BAD_REQUEST, "bad authorization request").into_response();
    }
    let state = q.get("state").cloned().unwrap_or_default();
    let mut to = redirect.clone();
    match inner.authorize_mode {
        AuthorizeMode::Deny => {
            to.query_pairs_mut()
                .append_pair("error", "access_denied")
                .append_pair("error_description", "AADSTS65004: User declined to consent")
                .append_pair("state", &state);
        }
        ref mode => {
            let n = s.counter.fetch_add(1, Ordering::SeqCst);
            let code = format!("code-{n}");
            let user = inner.sign_in_as.clone().unwrap_or_else(|| {
                q.get("login_hint")
                    .cloned()
                    .unwrap_or_else(|| inner.default_user.clone())
            });
            let challenge = q.get("code_challenge").cloned().unwrap_or_default();
            let state = if *mode == AuthorizeMode::WrongState {
                format!("{state}x")
            } else {
                state
            };
            inner.codes.insert(
                code.clone(),
                Code {
                    user,
                    challenge,
                    redirect_uri: redirect.to_string(),
                    scope: q.get("scope").cloned().unwrap_or_default(),
                    nonce: q.get("nonce").cloned(),
                },
            );
            to.query_pairs_mut()
                .append_pair("code", &code)
                .append_pair("state", &state);
        }
    }
    if inner.authorize_mode == AuthorizeMode::Consent {
        let href = to.to_string().replace('&', "&amp;").replace('"', "&quot;");
        return axum::response::Html(format!(
            "<!doctype html><html><head><title>Consent</title></head><body id=\"page-consent\"><a id=\"approve\" href=\"{href}\">Approve</a></body></html>"
        ))
        .into_response();
    }
    (StatusCode::FOUND, [(header::LOCATION, to.to_string())]).into_response()
}

/// The device authorization endpoint (RFC 8628 §3.1).
async fn devicecode(
    State(s): State<Arc<Shared>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut inner = s.inner.lock().unwrap();
    if form.get("client_id") != Some(&inner.client_id) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client");
    }
    let n = s.counter.fetch_add(1, Ordering::SeqCst);
    let device = format!("dev-{n}");
    let scope = form.get("scope").cloned().unwrap_or_default();
    inner.devices.insert(device.clone(), (0, scope));
    let user_code = format!("CODE-{n:04}");
    Json(json!({
        "device_code": device,
        "user_code": user_code,
        "verification_uri": "https://login.example.test/device",
        "expires_in": 120,
        "interval": 1,
        "message": format!("To sign in, use a web browser to open the page https://login.example.test/device and enter the code {user_code} to authenticate."),
    }))
    .into_response()
}

/// RFC 7662 token introspection, as Dovecot's oauth2 passdb asks it.
/// Besides `username`, the answer names in `shared` the mailbox delegated
/// to the token's owner (the first one in the delegation table; empty when
/// none): Dovecot cannot tell the introspection which mailbox the client
/// asked for, so its second oauth2 passdb compares `shared` with it.
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
        Some((user, _)) => {
            let shared = inner
                .delegations
                .iter()
                .find(|(d, _)| d.eq_ignore_ascii_case(user))
                .map(|(_, s)| s.as_str())
                .unwrap_or("");
            Json(json!({"active": true, "username": user, "shared": shared})).into_response()
        }
        None => Json(json!({"active": false})).into_response(),
    }
}
