//! Every OAuth 2.0 exchange mailgate makes, through the `oauth2` crate: the
//! refresh-token grant, the authorization code grant with PKCE (S256) and a
//! checked `state`, the device authorization grant (RFC 8628) and the client
//! credentials grant. One HTTP client for the process, with redirects
//! disabled (a token endpoint that redirects is misconfigured, and following
//! it could hand a secret elsewhere), and every answer read up to
//! [`MAX_ANSWER`] bytes only: a hostile or broken endpoint cannot make the
//! gateway hold an answer of any size.

use std::sync::Arc;
use std::time::Duration;

use mailgate_config::{Preset, Provider, Proxy};
use oauth2::basic::{
    BasicErrorResponse, BasicErrorResponseType, BasicRevocationErrorResponse,
    BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    DeviceAuthorizationUrl, EndpointNotSet, EndpointSet, ExtraDeviceAuthorizationFields,
    ExtraTokenFields, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, StandardErrorResponse, StandardRevocableToken, StandardTokenResponse,
    TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// What a token endpoint granted.
#[derive(Debug)]
pub struct Grant {
    pub access_token: SecretString,
    /// A refresh token: new, or rotated (Microsoft rotates on every refresh).
    pub refresh_token: Option<SecretString>,
    pub expires_in: Option<Duration>,
    /// The OpenID Connect ID token, when the provider sent one (it names
    /// who signed in; see [`crate::accounts::identity`]).
    pub id_token: Option<SecretString>,
}

/// The scopes that ask for an ID token naming the signed-in identity.
pub const IDENTITY_SCOPES: [&str; 2] = ["openid", "email"];

/// The token response's field beyond OAuth 2.0: OpenID Connect's
/// `id_token`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IdTokenField {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

impl ExtraTokenFields for IdTokenField {}

type TokenResponseWithId = StandardTokenResponse<IdTokenField, BasicTokenType>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum OAuthError {
    /// `invalid_grant`: the refresh token or code is dead (revoked, expired,
    /// password changed, wrong PKCE verifier). The user must authorise again.
    #[error("the provider rejected the grant (invalid_grant{})", detail(.0))]
    InvalidGrant(String),
    /// `invalid_client`: the client ID or secret is wrong or expired.
    #[error("the provider rejected mailgate's client credentials (invalid_client{}); check the provider's client_id and its client secret or certificate", detail(.0))]
    InvalidClient(String),
    /// The user declined (`access_denied`).
    #[error("the authorisation was declined (access_denied{})", detail(.0))]
    Declined(String),
    /// The device code expired before the user approved.
    #[error("the device code expired before the sign-in was completed; run the login again")]
    Expired,
    /// Any other OAuth error code.
    #[error("the provider answered {code}{}", detail(.description))]
    Other { code: String, description: String },
    /// `unauthorized_client` to a service account's assertion: the
    /// account has no domain-wide delegation for the scopes.
    #[error("the service account {email} may not act for the mailbox (unauthorized_client{}): in the Google Admin console (admin.google.com → Security → Access and data control → API controls → Manage domain-wide delegation) add client ID {client_id} with the scopes {scopes}", detail(.description))]
    NotDelegated {
        email: String,
        client_id: String,
        scopes: String,
        description: String,
    },
    /// A service account's key cannot sign.
    #[error("{0}")]
    BadKey(String),
    /// The endpoint could not be reached or timed out.
    #[error("the token endpoint cannot be reached: {0}")]
    Unreachable(String),
    /// The outbound proxy refused the request, or could not be reached.
    #[error("{0}")]
    Proxy(String),
    /// The endpoint answered something that is not an OAuth response.
    #[error("the token endpoint gave an invalid answer: {0}")]
    BadResponse(String),
    /// The provider lacks an endpoint this flow needs.
    #[error("provider {provider} has no {endpoint} configured")]
    NotConfigured {
        provider: String,
        endpoint: &'static str,
    },
}

fn detail(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

/// An authorization request ready to be opened in a browser (kept, with
/// its secrets, in a portal session until the redirect).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthorizationRequest {
    /// The URL to open.
    pub url: url::Url,
    /// The `state` it carries, to be checked on the redirect.
    #[serde(with = "crate::accounts::store::serde_secret")]
    pub state: SecretString,
    /// The PKCE verifier for the code exchange.
    #[serde(with = "crate::accounts::store::serde_secret")]
    pub verifier: SecretString,
    /// The OpenID Connect `nonce` it carries, which the ID token must echo.
    #[serde(with = "crate::accounts::store::serde_secret")]
    pub nonce: SecretString,
    /// The redirect URI it names (the code exchange must repeat it).
    pub redirect_uri: url::Url,
}

/// Microsoft adds a human `message` to the device authorization response.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeviceExtra {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl ExtraDeviceAuthorizationFields for DeviceExtra {}

/// A started device authorization.
pub type DeviceAuthorization = oauth2::DeviceAuthorizationResponse<DeviceExtra>;

/// A client whose token responses may carry an `id_token`.
type BareClient = oauth2::Client<
    BasicErrorResponse,
    TokenResponseWithId,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
>;

type TokenClient = oauth2::Client<
    BasicErrorResponse,
    TokenResponseWithId,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// The HTTP clients made for outbound proxies, by proxy.
type ProxiedClients = Vec<(Arc<Proxy>, reqwest::Client)>;

/// The process's OAuth client.
#[derive(Debug, Clone)]
pub struct OAuth {
    http: reqwest::Client,
    timeout: Duration,
    /// One client per outbound proxy in use, made at its first request.
    proxied: Arc<std::sync::Mutex<ProxiedClients>>,
}

impl OAuth {
    pub fn new(timeout: Duration) -> Result<OAuth, reqwest::Error> {
        Ok(OAuth {
            http: Self::build(timeout, None)?,
            timeout,
            proxied: Arc::default(),
        })
    }

    /// An HTTP client without redirects, through `proxy` (or direct:
    /// the environment's `HTTPS_PROXY` and the like are not used; the
    /// configuration's `proxy` is the one setting for every connection).
    fn build(timeout: Duration, proxy: Option<&Proxy>) -> Result<reqwest::Client, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("mailgate/", env!("CARGO_PKG_VERSION")))
            .no_proxy();
        if let Some(p) = proxy {
            builder = builder.proxy(reqwest::Proxy::all(
                p.url_with_credentials().expose_secret(),
            )?);
        }
        builder.build()
    }

    /// The client for `provider`'s token endpoint: through its proxy, if
    /// it has one.
    fn http(&self, provider: &Provider) -> Result<reqwest::Client, OAuthError> {
        let Some(proxy) = &provider.proxy else {
            return Ok(self.http.clone());
        };
        let mut cache = self
            .proxied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, c)) = cache.iter().find(|(p, _)| p == proxy) {
            return Ok(c.clone());
        }
        let client = Self::build(self.timeout, Some(proxy)).map_err(|e| {
            OAuthError::Proxy(format!("the proxy {proxy} cannot be used: {}", chain(&e)))
        })?;
        cache.push((proxy.clone(), client.clone()));
        Ok(client)
    }

    /// A failure to reach the endpoint, said as the proxy's when the
    /// request went through one.
    fn via(provider: &Provider, e: OAuthError) -> OAuthError {
        match (&provider.proxy, e) {
            (Some(proxy), OAuthError::Unreachable(why)) => OAuthError::Proxy(format!(
                "the proxy {proxy} refused or failed the request to the token endpoint {}: {why}",
                provider.token_url.host_str().unwrap_or("")
            )),
            (_, e) => e,
        }
    }

    /// A client with the provider's ID, secret and token URL.
    fn client(provider: &Provider) -> TokenClient {
        let mut client = BareClient::new(ClientId::new(provider.client_id.clone()))
            .set_token_uri(TokenUrl::from_url(provider.token_url.clone()))
            .set_auth_type(AuthType::RequestBody);
        if let Some(secret) = &provider.client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
        }
        client
    }

    fn scopes(provider: &Provider) -> impl Iterator<Item = Scope> + '_ {
        provider.scopes.iter().cloned().map(Scope::new)
    }

    /// The provider's scopes plus `openid email`, for a sign-in: the ID
    /// token then names who signed in.
    fn sign_in_scopes(provider: &Provider) -> impl Iterator<Item = Scope> + '_ {
        let extra = IDENTITY_SCOPES
            .into_iter()
            .filter(|s| !provider.scopes.iter().any(|p| p == s))
            .map(|s| Scope::new(s.to_owned()));
        Self::scopes(provider).chain(extra)
    }

    /// The refresh-token grant (RFC 6749 §6).
    pub async fn refresh(
        &self,
        provider: &Provider,
        refresh_token: &SecretString,
    ) -> Result<Grant, OAuthError> {
        let rt = RefreshToken::new(refresh_token.expose_secret().to_owned());
        let client = Self::client(provider);
        let mut request = client
            .exchange_refresh_token(&rt)
            .add_scopes(Self::scopes(provider));
        for (k, v) in client_assertion(provider, ASSERTION_LIFETIME)? {
            request = request.add_extra_param(k, v);
        }
        let response = request
            .request_async(&Capped(self.http(provider)?))
            .await
            .map_err(|e| Self::via(provider, convert(e)))?;
        Ok(grant(&response))
    }

    /// Builds an authorization code request with PKCE S256, a random
    /// `state` and a random OpenID Connect `nonce` for `redirect_uri`. The presets add what their providers
    /// need: `login_hint` everywhere, and for Google `access_type=offline`
    /// and `prompt=consent` (without them no refresh token comes back).
    pub fn authorization_request(
        &self,
        provider: &Provider,
        redirect_uri: &url::Url,
        login_hint: &str,
    ) -> Result<AuthorizationRequest, OAuthError> {
        let auth_url = provider
            .authorize_url
            .clone()
            .ok_or_else(|| OAuthError::NotConfigured {
                provider: provider.name.clone(),
                endpoint: "authorize_url",
            })?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let client = Self::client(provider)
            .set_auth_uri(AuthUrl::from_url(auth_url))
            .set_redirect_uri(RedirectUrl::from_url(redirect_uri.clone()));
        let nonce = CsrfToken::new_random();
        let mut req = client
            .authorize_url(CsrfToken::new_random)
            .add_scopes(Self::sign_in_scopes(provider))
            .set_pkce_challenge(challenge)
            .add_extra_param("login_hint", login_hint)
            .add_extra_param("nonce", nonce.secret());
        if provider.preset == Preset::Gmail {
            req = req
                .add_extra_param("access_type", "offline")
                .add_extra_param("prompt", "consent");
        }
        let (url, state) = req.url();
        Ok(AuthorizationRequest {
            url,
            state: SecretString::from(state.secret().clone()),
            verifier: SecretString::from(verifier.secret().clone()),
            nonce: SecretString::from(nonce.secret().clone()),
            redirect_uri: redirect_uri.clone(),
        })
    }

    /// Exchanges an authorization code (with its PKCE verifier).
    pub async fn exchange_code(
        &self,
        provider: &Provider,
        request: &AuthorizationRequest,
        code: &SecretString,
    ) -> Result<Grant, OAuthError> {
        let client = Self::client(provider)
            .set_redirect_uri(RedirectUrl::from_url(request.redirect_uri.clone()));
        let mut exchange = client
            .exchange_code(AuthorizationCode::new(code.expose_secret().to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(
                request.verifier.expose_secret().to_owned(),
            ));
        for (k, v) in client_assertion(provider, ASSERTION_LIFETIME)? {
            exchange = exchange.add_extra_param(k, v);
        }
        let response = exchange
            .request_async(&Capped(self.http(provider)?))
            .await
            .map_err(|e| Self::via(provider, convert(e)))?;
        Ok(grant(&response))
    }

    /// Starts a device authorization (RFC 8628 §3.1).
    pub async fn start_device(
        &self,
        provider: &Provider,
    ) -> Result<DeviceAuthorization, OAuthError> {
        let url = provider
            .device_code_url
            .clone()
            .ok_or_else(|| OAuthError::NotConfigured {
                provider: provider.name.clone(),
                endpoint: "device_code_url",
            })?;
        Self::client(provider)
            .set_device_authorization_url(DeviceAuthorizationUrl::from_url(url))
            .exchange_device_code()
            .add_scopes(Self::sign_in_scopes(provider))
            .request_async(&Capped(self.http(provider)?))
            .await
            .map_err(|e| Self::via(provider, convert(e)))
    }

    /// Polls the token endpoint until the user approves, declines or the
    /// code expires, honouring `interval` and `slow_down` (RFC 8628 §3.5).
    pub async fn poll_device(
        &self,
        provider: &Provider,
        details: &DeviceAuthorization,
    ) -> Result<Grant, OAuthError> {
        let deadline = tokio::time::Instant::now() + details.expires_in();
        let mut interval = details.interval().max(Duration::from_secs(1));
        loop {
            tokio::time::sleep(interval).await;
            match self.poll_device_once(provider, details).await? {
                Poll::Granted(grant) => return Ok(grant),
                Poll::Pending => {}
                Poll::SlowDown => interval += Duration::from_secs(5),
            }
            if tokio::time::Instant::now() + interval >= deadline {
                return Err(OAuthError::Expired);
            }
        }
    }

    /// One device token request (RFC 8628 §3.4), with a fresh client
    /// assertion when the provider authenticates with a certificate: an
    /// assertion is never sent twice (a recorded poll cannot be replayed,
    /// and Entra refuses a `jti` it has seen).
    pub async fn poll_device_once(
        &self,
        provider: &Provider,
        details: &DeviceAuthorization,
    ) -> Result<Poll, OAuthError> {
        let mut form = vec![
            ("grant_type", DEVICE_GRANT.to_owned()),
            ("device_code", details.device_code().secret().clone()),
            ("client_id", provider.client_id.clone()),
        ];
        if let Some(secret) = &provider.client_secret {
            form.push(("client_secret", secret.expose_secret().to_owned()));
        }
        form.extend(client_assertion(provider, ASSERTION_LIFETIME)?);
        match self.post_form(provider, &form).await {
            Ok(grant) => Ok(Poll::Granted(grant)),
            Err(OAuthError::Other { code, .. }) if code == "authorization_pending" => {
                Ok(Poll::Pending)
            }
            Err(OAuthError::Other { code, .. }) if code == "slow_down" => Ok(Poll::SlowDown),
            Err(e) => Err(e),
        }
    }

    /// POSTs `form` to the provider's token endpoint and reads the token
    /// response (at most [`MAX_ANSWER`] bytes).
    async fn post_form(
        &self,
        provider: &Provider,
        form: &[(&str, String)],
    ) -> Result<Grant, OAuthError> {
        let response = self
            .http(provider)?
            .post(provider.token_url.clone())
            .form(form)
            .send()
            .await
            .map_err(|e| Self::via(provider, OAuthError::Unreachable(chain(&e))))?;
        let status = response.status();
        let body = read_capped(response)
            .await
            .map_err(|e| Self::via(provider, e.into()))?;
        token_answer(status, &body)
    }

    /// The JWT bearer grant (RFC 7523) of a service account for `subject`
    /// (the mailbox): a fresh RS256 assertion, valid for an hour.
    pub async fn jwt_bearer(
        &self,
        provider: &Provider,
        subject: &str,
    ) -> Result<Grant, OAuthError> {
        let Some(sa) = &provider.service_account else {
            return Err(OAuthError::NotConfigured {
                provider: provider.name.clone(),
                endpoint: "service_account_file",
            });
        };
        let scopes = provider.scopes.join(" ");
        let assertion =
            service_account_assertion(sa, subject, &scopes, provider.token_url.as_str())?;
        let form = [
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:jwt-bearer".to_owned(),
            ),
            ("assertion", assertion.expose_secret().to_owned()),
        ];
        match self.post_form(provider, &form).await {
            Err(OAuthError::Other { code, description }) if code == "unauthorized_client" => {
                Err(OAuthError::NotDelegated {
                    email: sa.client_email.clone(),
                    client_id: sa
                        .client_id
                        .clone()
                        .unwrap_or_else(|| "(the key's client_id)".into()),
                    scopes: scopes.replace(' ', ","),
                    description,
                })
            }
            other => other,
        }
    }

    /// The client credentials grant (app-only access).
    pub async fn client_credentials(&self, provider: &Provider) -> Result<Grant, OAuthError> {
        let client = Self::client(provider);
        let mut request = client
            .exchange_client_credentials()
            .add_scopes(Self::scopes(provider));
        for (k, v) in client_assertion(provider, ASSERTION_LIFETIME)? {
            request = request.add_extra_param(k, v);
        }
        let response = request
            .request_async(&Capped(self.http(provider)?))
            .await
            .map_err(|e| Self::via(provider, convert(e)))?;
        Ok(grant(&response))
    }
}

/// The device grant's `grant_type`.
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Where a device sign-in stands after one poll.
#[derive(Debug)]
pub enum Poll {
    Granted(Grant),
    /// `authorization_pending`: ask again after the interval.
    Pending,
    /// `slow_down`: ask again, 5 s more apart.
    SlowDown,
}

/// The most of a token endpoint's answer that is read. Real answers (an
/// access token, a refresh token and an ID token) are a few KiB; a
/// larger one is refused as not an OAuth answer.
pub const MAX_ANSWER: usize = 256 * 1024;

/// Why an HTTP exchange with a token endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{}", chain(.0))]
    Request(#[from] reqwest::Error),
    #[error("the answer is larger than {} KiB", MAX_ANSWER / 1024)]
    TooLarge,
    #[error("{0}")]
    Http(#[from] oauth2::http::Error),
}

impl From<HttpError> for OAuthError {
    fn from(e: HttpError) -> OAuthError {
        match e {
            HttpError::TooLarge => OAuthError::BadResponse(e.to_string()),
            e => OAuthError::Unreachable(e.to_string()),
        }
    }
}

/// Reads a response's body, refusing one over [`MAX_ANSWER`] bytes
/// (announced or not) without reading further.
async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, HttpError> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER as u64)
    {
        return Err(HttpError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(HttpError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The `oauth2` crate's HTTP client: reqwest, with answers capped at
/// [`MAX_ANSWER`] bytes.
struct Capped(reqwest::Client);

impl<'c> oauth2::AsyncHttpClient<'c> for Capped {
    type Error = HttpError;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<oauth2::HttpResponse, HttpError>> + Send + 'c>,
    >;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = reqwest::Request::try_from(request)?;
            let response = self.0.execute(request).await?;
            let mut builder = oauth2::http::Response::builder()
                .status(response.status())
                .version(response.version());
            for (name, value) in response.headers() {
                builder = builder.header(name, value);
            }
            let body = read_capped(response).await?;
            Ok(builder.body(body)?)
        })
    }
}

/// A token endpoint's JSON answer: the grant, or its OAuth error. The
/// body is never logged: a malformed success could still hold a token.
fn token_answer(status: reqwest::StatusCode, body: &[u8]) -> Result<Grant, OAuthError> {
    #[derive(serde::Deserialize)]
    struct Answer {
        access_token: Option<String>,
        refresh_token: Option<String>,
        id_token: Option<String>,
        expires_in: Option<serde_json::Value>,
        error: Option<String>,
        error_description: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(body).map_err(|_| {
        OAuthError::BadResponse(format!("HTTP {status}, not an OAuth JSON response"))
    })?;
    match (answer.access_token, answer.error) {
        (Some(token), None) if status.is_success() => Ok(Grant {
            access_token: SecretString::from(token),
            refresh_token: answer.refresh_token.map(SecretString::from),
            // A number, or (Microsoft's v1 endpoints) a string of one.
            expires_in: answer
                .expires_in
                .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
                .map(Duration::from_secs),
            id_token: answer.id_token.map(SecretString::from),
        }),
        (_, Some(code)) => Err(convert_code(
            &code,
            answer.error_description.unwrap_or_default(),
        )),
        _ => Err(OAuthError::BadResponse(format!(
            "HTTP {status} without an access token"
        ))),
    }
}

fn grant(response: &TokenResponseWithId) -> Grant {
    Grant {
        access_token: SecretString::from(response.access_token().secret().to_owned()),
        refresh_token: response
            .refresh_token()
            .map(|r| SecretString::from(r.secret().to_owned())),
        expires_in: response.expires_in(),
        id_token: response
            .extra_fields()
            .id_token
            .clone()
            .map(SecretString::from),
    }
}

fn convert_code(code: &str, description: String) -> OAuthError {
    match code {
        "invalid_grant" => OAuthError::InvalidGrant(description),
        "invalid_client" => OAuthError::InvalidClient(description),
        "access_denied" | "authorization_declined" => OAuthError::Declined(description),
        "expired_token" => OAuthError::Expired,
        other => OAuthError::Other {
            code: other.to_owned(),
            description,
        },
    }
}

fn convert_transport<T>(err: RequestTokenError<HttpError, T>) -> OAuthError
where
    T: oauth2::ErrorResponse,
{
    match err {
        RequestTokenError::Request(e) => e.into(),
        // The body is not logged: a malformed success could still hold a token.
        RequestTokenError::Parse(e, _body) => {
            OAuthError::BadResponse(format!("not an OAuth JSON response (at {})", e.path()))
        }
        RequestTokenError::Other(s) => OAuthError::BadResponse(s),
        RequestTokenError::ServerResponse(_) => OAuthError::BadResponse("unexpected error".into()),
    }
}

fn convert(
    err: RequestTokenError<HttpError, StandardErrorResponse<BasicErrorResponseType>>,
) -> OAuthError {
    match err {
        RequestTokenError::ServerResponse(r) => convert_code(
            r.error().as_ref(),
            r.error_description().cloned().unwrap_or_default(),
        ),
        other => convert_transport(other),
    }
}

/// An error with its sources, on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// How long a client assertion is valid (Microsoft's libraries use ten
/// minutes).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(600);

/// The `client_assertion` parameters of a token request when the provider
/// authenticates with a certificate (none otherwise): a JWT signed with the
/// certificate's key, naming the certificate by its SHA-256 thumbprint
/// (`x5t#S256`), with `iss` and `sub` the client ID and `aud` the token
/// endpoint (RFC 7523 §2.2 and §3, Microsoft's certificate credentials).
fn client_assertion(
    provider: &Provider,
    lifetime: Duration,
) -> Result<Vec<(&'static str, String)>, OAuthError> {
    let Some(cert) = &provider.client_certificate else {
        return Ok(Vec::new());
    };
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        iss: &'a str,
        sub: &'a str,
        aud: &'a str,
        jti: String,
        iat: u64,
        nbf: u64,
        exp: u64,
    }
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(cert.key_pem().as_bytes()).map_err(|e| {
        OAuthError::BadKey(format!(
            "the client key {} cannot be used: {e}",
            cert.key_file.display()
        ))
    })?;
    let mut header = jsonwebtoken::Header::new(cert.algorithm.jose());
    header.x5t_s256 = Some(cert.x5t_s256.clone());
    let now = crate::accounts::store::now();
    let claims = Claims {
        iss: &provider.client_id,
        sub: &provider.client_id,
        aud: provider.token_url.as_str(),
        jti: random_guid(),
        iat: now,
        nbf: now,
        exp: now + lifetime.as_secs(),
    };
    let jwt = jsonwebtoken::encode(&header, &claims, &key)
        .map_err(|e| OAuthError::BadKey(format!("cannot sign the client assertion: {e}")))?;
    Ok(vec![
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
        ),
        ("client_assertion", jwt),
    ])
}

/// 16 random bytes as a GUID (`8-4-4-4-12` hex), the `jti` Microsoft asks for.
fn random_guid() -> String {
    use rand_core::RngCore as _;
    let mut id = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut id);
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// A service account's signed assertion for `subject` (Google's claims:
/// `iss` the account, `sub` the mailbox, `scope`, `aud` the token endpoint,
/// an hour at most; a random `jti`; the key's ID as `kid`).
fn service_account_assertion(
    sa: &mailgate_config::ServiceAccount,
    subject: &str,
    scopes: &str,
    token_url: &str,
) -> Result<SecretString, OAuthError> {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        iss: &'a str,
        sub: &'a str,
        scope: &'a str,
        aud: &'a str,
        iat: u64,
        exp: u64,
        jti: String,
    }
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(sa.private_key.expose_secret().as_bytes())
        .map_err(|e| {
            OAuthError::BadKey(format!(
                "the private key of {} cannot be used: {e}",
                sa.file.display()
            ))
        })?;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = sa.private_key_id.clone();
    let iat = crate::accounts::store::now();
    let claims = Claims {
        iss: &sa.client_email,
        sub: subject,
        scope: scopes,
        aud: token_url,
        iat,
        exp: iat + 3600,
        // RS256 is deterministic: without a unique ID two assertions in the
        // same second would be the same bytes, which a token endpoint may
        // refuse as a replay (RFC 7523 §3).
        jti: random_guid(),
    };
    jsonwebtoken::encode(&header, &claims, &key)
        .map(SecretString::from)
        .map_err(|e| OAuthError::BadKey(format!("cannot sign the assertion: {e}")))
}
