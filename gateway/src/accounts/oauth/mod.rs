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
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    DeviceAuthorizationUrl, EndpointNotSet, EndpointSet, ExtraDeviceAuthorizationFields,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, Scope, StandardRevocableToken,
    TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::accounts::store::Audience;

mod answer;
mod assertion;
mod http;

pub(crate) use answer::chain;
pub use answer::{Grant, HttpError, IdTokenField, MAX_ANSWER, OAuthError};
use answer::{TokenResponseWithId, convert, grant, token_answer};
use assertion::{ASSERTION_LIFETIME, client_assertion, service_account_assertion};
use http::{Capped, read_capped};

/// The scopes that ask for an ID token naming the signed-in identity.
pub const IDENTITY_SCOPES: [&str; 2] = ["openid", "email"];

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

/// Sends a token request of any grant type (their builders share no
/// trait): the client assertion added when the provider authenticates
/// with one, sent through the capped client, its answer made a [`Grant`].
macro_rules! send_for_grant {
    ($oauth:expr, $provider:expr, $request:expr) => {{
        let mut request = $request;
        for (k, v) in client_assertion($provider, ASSERTION_LIFETIME)? {
            request = request.add_extra_param(k, v);
        }
        let response = request
            .request_async(&Capped($oauth.http($provider)?))
            .await
            .map_err(|e| Self::via($provider, convert(e)))?;
        Ok(grant(&response))
    }};
}

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
    /// The HTTP client for `provider`'s requests: the process's, or one
    /// through the provider's proxy (no redirects either way).
    pub(crate) fn http(&self, provider: &Provider) -> Result<reqwest::Client, OAuthError> {
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

    /// The scopes of a token for `audience`: the provider's (mail), or
    /// Graph's. Microsoft issues a token for one resource at a time, so
    /// each is asked for apart.
    fn scopes_for(provider: &Provider, audience: Audience) -> Vec<Scope> {
        let list = match audience {
            Audience::Mail => &provider.scopes,
            Audience::Graph => &provider.graph.scopes,
        };
        list.iter().cloned().map(Scope::new).collect()
    }

    /// The provider's scopes plus `openid email`, for a sign-in: the ID
    /// token then names who signed in.
    fn sign_in_scopes(provider: &Provider) -> impl Iterator<Item = Scope> + '_ {
        // Sending through Graph: the person consents to Mail.Send with the
        // same sign-in (the code is then redeemed for the mail resource;
        // a Graph token is asked for apart).
        let graph = provider
            .graph
            .scopes
            .iter()
            .map(String::as_str)
            .filter(|s| s.starts_with("https://graph.microsoft.com/Mail.Send"))
            .filter(|_| provider.sending != mailgate_config::Sending::Smtp);
        let extra = IDENTITY_SCOPES
            .into_iter()
            .chain(graph)
            .filter(|s| !provider.scopes.iter().any(|p| p == s))
            .map(|s| Scope::new(s.to_owned()));
        Self::scopes(provider).chain(extra)
    }

    /// The refresh-token grant (RFC 6749 §6), for a token of `audience`.
    pub async fn refresh(
        &self,
        provider: &Provider,
        refresh_token: &SecretString,
        audience: Audience,
    ) -> Result<Grant, OAuthError> {
        let rt = RefreshToken::new(refresh_token.expose_secret().to_owned());
        let client = Self::client(provider);
        send_for_grant!(
            self,
            provider,
            client
                .exchange_refresh_token(&rt)
                .add_scopes(Self::scopes_for(provider, audience))
        )
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
        send_for_grant!(
            self,
            provider,
            client
                .exchange_code(AuthorizationCode::new(code.expose_secret().to_owned()))
                .set_pkce_verifier(PkceCodeVerifier::new(
                    request.verifier.expose_secret().to_owned(),
                ))
        )
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
    pub async fn client_credentials(
        &self,
        provider: &Provider,
        audience: Audience,
    ) -> Result<Grant, OAuthError> {
        let client = Self::client(provider);
        send_for_grant!(
            self,
            provider,
            client
                .exchange_client_credentials()
                .add_scopes(Self::scopes_for(provider, audience))
        )
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
